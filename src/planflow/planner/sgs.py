"""Serial schedule generation (SGS) in continuous time, and forward-backward improvement
(FBI, a.k.a. justification): the schedule builders the heuristics (heuristics.py) and the
exact model's warm start (exact.py) share.

A pool's resource usage is a step function kept as sorted breakpoints, so non-integer
durations (3.7 s) need no time grid and capacities hold exactly at every instant. For
PSPLIB's integer durations the results are the same as with a period-indexed profile.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from .instance import Instance

EPS = 1e-9


@dataclass
class Schedule:
    start: list[float]
    mode: list[int]  # index into inst.modes[j]
    makespan: float

    def finish(self, inst: Instance, j: int) -> float:
        return self.start[j] + inst.modes[j][self.mode[j]].dur

    def cost(self, inst: Instance) -> float:
        return sum(inst.modes[j][m].cost for j, m in enumerate(self.mode))

    def key(self, inst: Instance) -> tuple[float, float]:
        """Lexicographic objective: makespan, then cost."""
        return (round(self.makespan, 9), round(self.cost(inst), 9))


# ----------------------------------------------------------------------------- profiles
def _split(ts: list[float], use: list[list[float]], t: float) -> int:
    """Ensure a breakpoint at ``t``; return its index."""
    i = bisect_left(ts, t - EPS)
    if i < len(ts) and abs(ts[i] - t) <= EPS:
        return i
    ts.insert(i, t)
    use.insert(i, use[i - 1][:])
    return i


def earliest_start(
    ts: list[float], use: list[list[float]], cap: list[float], dem: list[tuple[int, float]], dur: float, es: float
) -> float:
    """Earliest t >= es with usage + dem <= cap on [t, t+dur)."""
    if dur <= EPS or not dem:
        return es
    n = len(ts)
    j = bisect_right(ts, es + EPS) - 1
    t = es
    while True:
        end = t + dur - EPS
        bad = -1
        while j < n and ts[j] < end:
            u = use[j]
            for k, r in dem:
                if u[k] + r > cap[k] + EPS:
                    bad = j
                    break
            if bad >= 0:
                break
            j += 1
        if bad < 0:
            return t
        # The last interval (after every finish) is empty and every mode fits its pool,
        # so ``bad + 1`` always exists.
        j = bad + 1
        t = ts[j]


def add_usage(ts: list[float], use: list[list[float]], s: float, f: float, dem: list[tuple[int, float]]) -> None:
    if f - s <= EPS or not dem:
        return
    a = _split(ts, use, s)
    b = _split(ts, use, f)
    for i in range(a, b):
        u = use[i]
        for k, r in dem:
            u[k] += r


def usage_profiles(inst: Instance, held: bool = True) -> list[tuple[list[float], list[list[float]]]]:
    """Each pool's usage at time 0: what its capacity steps take away (``held``), else none.
    The backward pass runs in reversed time, where the steps do not apply: it only
    proposes an order, and the forward pass that follows places it within them."""
    R = len(inst.resources)
    profiles = []
    for pool in range(len(inst.caps)):
        ts, use = [0.0], [[0.0] * R]
        for s, e, lack in inst.held[pool] if held else ():
            add_usage(ts, use, s, e, [(k, a) for k, a in enumerate(lack) if a > EPS])
        profiles.append((ts, use))
    return profiles


# ----------------------------------------------------------------------------- SGS
def serial_sgs(
    inst: Instance, order: Sequence[int], modes: Sequence[int] | None = None, backward: bool = False
) -> Schedule:
    """Serial schedule generation: place each task of ``order`` at its earliest feasible start.

    ``order`` must be precedence feasible (for ``backward`` w.r.t. the reversed graph).
    ``modes`` fixes each task's mode; ``None`` picks, per task, the mode that finishes
    first (then the cheaper one), which is how multi-pool choices are made greedily.
    With ``backward`` the schedule is built on the reversed graph and the returned start
    times are already mapped back to forward time.
    """
    profiles = usage_profiles(inst, held=not backward)
    caps = inst.caps
    n = inst.n
    start = [0.0] * n
    fin = [0.0] * n
    chosen = [0] * n
    before = inst.succs if backward else inst.preds
    allm = inst.modes
    for j in order:
        es = 0.0
        for p in before[j]:
            if fin[p] > es:
                es = fin[p]
        mj = allm[j]
        if modes is not None:
            mi = modes[j]
            m = mj[mi]
            ts, use = profiles[m.pool]
            s = earliest_start(ts, use, caps[m.pool], m.dem, m.dur, es)
        else:
            best = None
            for i, m in enumerate(mj):
                ts, use = profiles[m.pool]
                s0 = earliest_start(ts, use, caps[m.pool], m.dem, m.dur, es)
                k = (s0 + m.dur, m.cost, i)
                if best is None or k < best[0]:
                    best = (k, s0, i)
            assert best is not None
            _, s, mi = best
            m = mj[mi]
            ts, use = profiles[m.pool]
        add_usage(ts, use, s, s + m.dur, m.dem)
        start[j] = s
        fin[j] = s + m.dur
        chosen[j] = mi
    ms = max(fin, default=0.0)
    if backward:
        start = [ms - fin[j] for j in range(n)]
    return Schedule(start, chosen, ms)


def order_of(inst: Instance, sched: Schedule) -> list[int]:
    """Activity list sorted by start time (ties: topological order), precedence feasible."""
    tp = inst.topo_pos
    return sorted(range(inst.n), key=lambda j: (sched.start[j], tp[j]))


def fbi(inst: Instance, sched: Schedule, max_rounds: int = 10) -> tuple[Schedule, list[int]]:
    """Forward-backward improvement: right-justify then left-justify until no gain.

    Never returns a longer schedule; the returned list reproduces it with fixed modes.
    """
    tp = inst.topo_pos
    best = sched
    best_order = order_of(inst, sched)
    for _ in range(max_rounds):
        fin = [best.finish(inst, j) for j in range(inst.n)]
        b_order = sorted(range(inst.n), key=lambda j: (-fin[j], -best.start[j], -tp[j]))
        back = serial_sgs(inst, b_order, best.mode, backward=True)
        f_order = order_of(inst, back)
        fwd = serial_sgs(inst, f_order, back.mode)
        if fwd.makespan < best.makespan - EPS:
            best, best_order = fwd, f_order
        else:
            break
    return best, best_order
