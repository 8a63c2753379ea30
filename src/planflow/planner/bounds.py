"""Lower bounds on the makespan, valid for several pools and several modes.

* critical path: longest precedence chain using every task's shortest mode;
* resource energy: a task in mode m holds ``duration * demand[r]`` resource-seconds of r.
  Each task needs at least its smallest energy over its modes, and all pools together
  supply at most ``makespan * sum of capacities`` of r, so
  ``makespan >= sum_j min_m energy / sum_p cap_p[r]``.  Tasks whose modes all lie on one
  pool give the sharper per-pool bound ``sum of their energies / cap_p[r]``.

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
            best = max(best, total / total_cap)
        for p in range(P):
            if inst.caps[p][k] > EPS:
                best = max(best, per_pool[p] / inst.caps[p][k])
    return best


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
