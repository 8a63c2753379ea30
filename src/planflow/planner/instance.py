"""Index-based form of a validated :class:`Problem`, shared by heuristics, bounds and MILP.

Pure Python lists of ints/floats so that the schedule generation inner loops stay cheap.
Modes that cannot fit their pool are dropped here (``validate_problem`` has already
guaranteed that every task keeps at least one), but each kept mode remembers its index in
``task.modes`` so plans report the user's mode number.
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass, field

from .problem import EPS, Problem, mode_fits


@dataclass
class IMode:
    orig: int  # index into task.modes
    pool: int
    dur: float
    dem: list[tuple[int, float]]  # (resource index, amount) for amounts > 0 only
    nr: list[tuple[int, float]]  # (non-renewable index, amount) for amounts > 0 only
    cost: float  # dur * pool cost_per_hour / 3600


@dataclass
class Instance:
    problem: Problem
    names: list[str]
    index: dict[str, int]
    modes: list[list[IMode]]
    preds: list[list[int]]
    succs: list[list[int]]
    topo: list[int]  # a topological order
    topo_pos: list[int]
    resources: list[str]  # renewable resource names (union over pools and demands)
    caps: list[list[float]]  # caps[pool][resource]
    pool_names: list[str]
    nr_names: list[str]
    nr_caps: list[float]
    # What each pool lacks over time (its capacity steps): (start, end, amount per resource)
    held: list[list[tuple[float, float, list[float]]]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.names)

    def min_dur(self, j: int) -> float:
        return min(m.dur for m in self.modes[j])

    @property
    def integral(self) -> bool:
        """True when every duration (and capacity step boundary) is a whole number
        (PSPLIB): makespans are integers."""
        return all(abs(x - round(x)) < EPS for x in self.times())

    def times(self) -> list[float]:
        """Every duration and capacity step boundary: the numbers a schedule's times add up from."""
        return [m.dur for ms in self.modes for m in ms] + [t for h in self.held for s, e, _ in h for t in (s, e)]

    def cap_between(self, pool: int, k: int, a: float, b: float) -> float:
        """The least capacity of resource ``k`` on ``pool`` anywhere in [a, b)."""
        lack = max((u[k] for s, e, u in self.held[pool] if s < b - EPS and e > a + EPS), default=0.0)
        return self.caps[pool][k] - lack


def _topological_order(preds: list[list[int]]) -> list[int]:
    """A topological order of tasks 0..n-1, deterministic: depth first from the lowest
    ready index (the heuristics break ties by this order, so it must not change)."""
    sorter: graphlib.TopologicalSorter[int] = graphlib.TopologicalSorter()
    for j in range(len(preds)):  # every task first, in index order: graphlib releases in this order
        sorter.add(j)
    for j, ps in enumerate(preds):
        sorter.add(j, *ps)
    sorter.prepare()
    stack = list(reversed(sorter.get_ready()))
    topo: list[int] = []
    while stack:
        j = stack.pop()
        topo.append(j)
        sorter.done(j)
        stack.extend(sorter.get_ready())
    return topo


def compile_problem(problem: Problem) -> Instance:
    """Translate a problem (already validated) to index form."""
    names = [t.name for t in problem.tasks]
    index = {n: i for i, n in enumerate(names)}
    pool_names = [p.name for p in problem.pools]
    pidx = {n: i for i, n in enumerate(pool_names)}
    res: dict[str, int] = {}
    for p in problem.pools:
        for r in p.capacity:
            res.setdefault(r, len(res))
    for t in problem.tasks:
        for m in t.modes:
            for r in m.demand:
                res.setdefault(r, len(res))
    nr: dict[str, int] = {}
    for r in problem.nonrenewable_capacity:
        nr.setdefault(r, len(nr))
    for t in problem.tasks:
        for m in t.modes:
            for r in m.nonrenewable:
                nr.setdefault(r, len(nr))
    caps = [[float(p.capacity.get(r, 0.0)) for r in res] for p in problem.pools]
    held = [
        [
            (
                float(s.start),
                float(s.end),
                [max(0.0, c - float(s.capacity.get(r, 0.0))) for r, c in zip(res, cap, strict=True)],
            )
            for s in sorted(p.steps, key=lambda s: s.start)
        ]
        for p, cap in zip(problem.pools, caps, strict=True)
    ]
    modes: list[list[IMode]] = []
    for t in problem.tasks:
        ms = []
        for i, m in enumerate(t.modes):
            pool = problem.pools[pidx[m.pool]]
            if mode_fits(m, pool):
                continue
            ms.append(
                IMode(
                    orig=i,
                    pool=pidx[m.pool],
                    dur=float(m.duration),
                    dem=[(res[r], float(a)) for r, a in m.demand.items() if a > EPS],
                    nr=[(nr[r], float(a)) for r, a in m.nonrenewable.items() if a > EPS],
                    cost=float(m.duration) * pool.cost_per_hour / 3600.0,
                )
            )
        modes.append(ms)
    preds = [sorted({index[a] for a in t.after}) for t in problem.tasks]
    succs: list[list[int]] = [[] for _ in names]
    for j, ps in enumerate(preds):
        for p in ps:
            succs[p].append(j)
    topo = _topological_order(preds)
    topo_pos = [0] * len(names)
    for i, j in enumerate(topo):
        topo_pos[j] = i
    return Instance(
        problem=problem,
        names=names,
        index=index,
        modes=modes,
        preds=preds,
        succs=succs,
        topo=topo,
        topo_pos=topo_pos,
        resources=list(res),
        caps=caps,
        pool_names=pool_names,
        nr_names=list(nr),
        nr_caps=[float(problem.nonrenewable_capacity.get(r, 0.0)) for r in nr],
        held=held,
    )
