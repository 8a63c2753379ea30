"""Pieces of the branch and bound in exact.py that need no search state: cliques of
tasks that never overlap, the dominance test between partial schedules, and the time by
which pools with a usage profile supply some work.

A profile is a pool's usage over time as in heuristics.py: breakpoints ``ts`` and the
usage per resource from each breakpoint on (the last segment runs to infinity).
"""

from __future__ import annotations

from .instance import IMode, Instance

EPS = 1e-9

Profile = tuple[list[float], list[list[float]]]


def cliques(inst: Instance) -> list[tuple[int, list[int], list[bool]]]:
    """Per pool p, greedy maximal cliques (one grown from each task, longest first, no
    duplicates) of the pairs that never overlap once both run on p: one depends on the
    other (transitively), or every pair of their modes on p exceeds a resource of p.
    Each member comes with whether it depends on (or is needed by) all the others."""
    n = inst.n
    reach = [0] * n
    for j in reversed(inst.topo):
        for s in inst.succs[j]:
            reach[j] |= reach[s] | (1 << s)
    ordered = [[bool(reach[i] >> j & 1 or reach[j] >> i & 1) for j in range(n)] for i in range(n)]
    by_length = sorted(range(n), key=lambda j: -inst.min_dur(j))
    out: list[tuple[int, list[int], list[bool]]] = []
    for p in range(len(inst.caps)):
        on_p = [[m for m in inst.modes[j] if m.pool == p] for j in range(n)]

        seen: list[list[int]] = []
        for seed in by_length:
            clique = [seed]
            for j in by_length:
                if j != seed and all(ordered[j][c] or clash(inst, p, on_p[j], on_p[c]) for c in clique):
                    clique.append(j)
            clique.sort()
            if len(clique) > 1 and clique not in seen:
                seen.append(clique)
                flags = [all(ordered[j][c] for c in clique if c != j) for j in clique]
                out.append((p, clique, flags))
    return out


def covers(
    a_ends: list[float], a_profiles: list[Profile], b_ends: list[float], b_profiles: list[Profile], last: float
) -> bool:
    """Partial schedule A (finishes, pool usage) serves every completion of B (whose
    remaining tasks start at or after ``last``): each task ends in A by max(its end in
    B, ``last``), and from ``last`` on A never uses more of any resource of any pool."""
    for fa, fb in zip(a_ends, b_ends, strict=True):
        if fa > max(fb, last) + EPS:
            return False
    for (tsa, usea), (tsb, useb) in zip(a_profiles, b_profiles, strict=True):
        if tsa is tsb:
            continue  # the same pool profile object: nothing scheduled differently there
        for t in sorted({last, *(t for t in tsa if t > last), *(t for t in tsb if t > last)}):
            ua, ub = usea[segment(tsa, t)], useb[segment(tsb, t)]
            if any(x > y + EPS for x, y in zip(ua, ub, strict=True)):
                return False
    return True


def clash(inst: Instance, pool: int, a_modes: list[IMode], b_modes: list[IMode]) -> bool:
    """Every pair of these modes (both on ``pool``) exceeds a resource of the pool."""
    return bool(a_modes and b_modes) and all(
        a.dur > EPS and b.dur > EPS and any(x + dict(b.dem).get(k, 0.0) > inst.caps[pool][k] + EPS for k, x in a.dem)
        for a in a_modes
        for b in b_modes
    )


def filled_by(pools: list[tuple[Profile, float]], k: int, t0: float, work: float) -> float:
    """The earliest time by which ``pools`` (usage profile, capacity of resource ``k``)
    have, from ``t0`` on, enough capacity left over to supply ``work`` resource-seconds."""
    if len(pools) == 1:
        (ts, use), cap = pools[0]
        i = segment(ts, t0)
        a, done, last = t0, 0.0, len(ts) - 1
        while True:
            b = ts[i + 1] if i < last else float("inf")
            rate = cap - use[i][k]
            if rate > EPS:
                if done + rate * (b - a) >= work - EPS:
                    return a + (work - done) / rate
                done += rate * (b - a)
            elif i == last:
                return float("inf")  # no capacity left for resource k at all
            i += 1
            a = b
    marks = sorted({t0, *(t for (ts, _), _ in pools for t in ts if t > t0)})
    at = [segment(ts, t0) for (ts, _), _ in pools]  # each pool's segment at the current mark
    done = 0.0
    for a, b in zip(marks, [*marks[1:], float("inf")], strict=True):
        rate = 0.0
        for q, ((ts, use), cap) in enumerate(pools):
            i = at[q]
            while i + 1 < len(ts) and ts[i + 1] <= a + EPS:
                i += 1
            at[q] = i
            left = cap - use[i][k]
            if left > 0.0:
                rate += left
        if rate <= EPS:
            continue
        if done + rate * (b - a) >= work - EPS:
            return a + (work - done) / rate
        done += rate * (b - a)
    return float("inf")  # no capacity left for resource k at all


def segment(ts: list[float], t: float) -> int:
    """Index of the profile segment holding time ``t`` (segments start at ``ts[i]``)."""
    lo, hi = 0, len(ts)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ts[mid] <= t + EPS:
            lo = mid
        else:
            hi = mid
    return lo
