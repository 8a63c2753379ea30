"""Lower bounds on the makespan, valid for several pools and several modes.

* critical path: longest precedence chain using every task's shortest mode;
* resource energy: a task in mode m holds ``duration * demand[r]`` resource-seconds of r.
  Each task needs at least its smallest energy over its modes, and all pools together
  supply at most ``makespan * sum of capacities`` of r, so
  ``makespan >= sum_j min_m energy / sum_p cap_p[r]``.  Tasks whose modes all lie on one
  pool give the sharper per-pool bound ``sum of their energies / cap_p[r]``.  Where a pool's
  capacity varies over time (steps) the bound is the time by which it has supplied that
  energy (:func:`supplied_by`).

For integer durations (PSPLIB) a makespan is an integer, so bounds are rounded up.
"""

from __future__ import annotations

import math

from .heuristics import priorities
from .instance import Instance

EPS = 1e-9


def critical_path_bound(inst: Instance) -> float:
    return priorities(inst).cp


def energy_bound(inst: Instance) -> float:
    R = len(inst.resources)
    P = len(inst.caps)
    best = 0.0
    for k in range(R):
        total_cap = sum(inst.caps[p][k] for p in range(P))
        total = 0.0
        per_pool = [0.0] * P
        for j in range(inst.n):
            e = min(m.dur * dict(m.dem).get(k, 0.0) for m in inst.modes[j])
            total += e
            pools = {m.pool for m in inst.modes[j]}
            if len(pools) == 1:
                per_pool[next(iter(pools))] += e
        if total_cap > EPS:
            best = max(best, supplied_by(total, total_cap, [h for p in range(P) for h in _lack(inst, p, k)]))
        for p in range(P):
            if inst.caps[p][k] > EPS:
                best = max(best, supplied_by(per_pool[p], inst.caps[p][k], _lack(inst, p, k)))
    return best


def _lack(inst: Instance, pool: int, k: int) -> list[tuple[float, float, float]]:
    return [(s, e, u[k]) for s, e, u in inst.held[pool] if u[k] > EPS]


def supplied_by(work: float, cap: float, lack: list[tuple[float, float, float]]) -> float:
    """The earliest time T by which a capacity ``cap``, less what ``lack`` takes away over
    time ((start, end, amount) intervals), has supplied ``work`` resource-seconds: with a
    capacity that varies over time, the energy bound is this T, not ``work / cap``."""
    if work <= EPS:
        return 0.0
    marks = sorted({0.0, *(t for s, e, _ in lack for t in (s, e))})
    done = 0.0
    for a, b in zip(marks, marks[1:], strict=False):
        rate = max(0.0, cap - sum(x for s, e, x in lack if s <= a + EPS and e > a + EPS))
        if rate > EPS and done + rate * (b - a) >= work - EPS:
            return a + (work - done) / rate
        done += rate * (b - a)
    return marks[-1] + (work - done) / cap


def round_bound(inst: Instance, value: float) -> float:
    """Round up to an integer for integer-duration problems (tolerating float noise)."""
    if inst.integral:
        return float(math.ceil(value - 1e-6))
    return value


def lower_bounds(inst: Instance) -> dict[str, float]:
    return {
        "critical_path": round_bound(inst, critical_path_bound(inst)),
        "resource": round_bound(inst, energy_bound(inst)),
    }
