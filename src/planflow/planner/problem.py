"""The planning problem: tasks with modes, resource pools, precedence.

A *mode* says how a task can run: on which pool, for how long, using how much of each
renewable resource of that pool (cpu, gpu, mem_gib, ... or PSPLIB's R1..R4) for its whole
duration, plus optional non-renewable consumption (a budget spent once per task, PSPLIB
``.mm`` only).  The planner picks one mode and a start time per task.

Example::

    >>> from planflow.planner import Mode, Pool, Problem, Task, solve
    >>> cpu = Pool("cpu", {"cpu": 8, "mem_gib": 16}, cost_per_hour=1.0)
    >>> gpu = Pool("gpu", {"cpu": 4, "gpu": 1, "mem_gib": 32}, cost_per_hour=3.0)
    >>> prep = Task("prep", (Mode("cpu", 30, {"cpu": 4}),))
    >>> train = Task("train", (Mode("cpu", 600, {"cpu": 8}),
    ...                        Mode("gpu", 120, {"cpu": 2, "gpu": 1})), after=("prep",))
    >>> plan = solve(Problem((prep, train), (cpu, gpu)))
    >>> plan["train"].pool, plan.makespan
    ('gpu', 150.0)
"""

from __future__ import annotations

import difflib
import graphlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import CycleError, InfeasibleError

EPS = 1e-9


@dataclass(frozen=True)
class Mode:
    """One way to run a task: on ``pool`` for ``duration`` seconds using ``demand``."""

    pool: str
    duration: float  # seconds (for PSPLIB: periods), >= 0
    demand: Mapping[str, float]  # renewable resource name -> amount held while running
    nonrenewable: Mapping[str, float] = field(default_factory=dict)  # PSPLIB .mm only


@dataclass(frozen=True)
class Task:
    """A component of the pipeline; it may start only after every task in ``after`` ends."""

    name: str
    modes: tuple[Mode, ...]
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """The capacity a pool has left from ``start`` to ``end`` (seconds from the plan's
    time 0), e.g. while other runs hold part of it (missing resource = 0)."""

    start: float
    end: float
    capacity: Mapping[str, float]


@dataclass(frozen=True)
class Pool:
    """A set of machines with a capacity per renewable resource (missing resource = 0).

    ``steps`` make the capacity a step function of time: inside a step the pool has the
    step's capacity, everywhere else ``capacity``. Steps lie within [0, end) and never
    overlap; outside them the whole pool is free, so a task that fits ``capacity``
    always finds a start.

        >>> busy = Pool("p", {"cpu": 2}, steps=(Step(0, 30, {"cpu": 1}),))
        >>> busy.capacity_at(10), busy.capacity_at(30)
        ({'cpu': 1}, {'cpu': 2})
    """

    name: str
    capacity: Mapping[str, float]
    cost_per_hour: float = 0.0
    steps: tuple[Step, ...] = ()

    def capacity_at(self, t: float) -> Mapping[str, float]:
        for step in self.steps:
            if step.start <= t + EPS and t + EPS < step.end:
                return step.capacity
        return self.capacity


@dataclass(frozen=True)
class Problem:
    """Tasks, pools, and the budget of each non-renewable resource (missing = 0)."""

    tasks: tuple[Task, ...]
    pools: tuple[Pool, ...]
    nonrenewable_capacity: Mapping[str, float] = field(default_factory=dict)


def fmt(x: float) -> str:
    """Format a number for messages: 12.0 -> '12', 3.25 -> '3.25'."""
    x = float(x)
    return str(int(x)) if x == int(x) else f"{x:g}"


def fmt_map(m: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in m.items()) + "}"


def mode_fits(mode: Mode, pool: Pool) -> list[str]:
    """Resources of ``mode`` that exceed ``pool``'s capacity (empty list = it fits)."""
    return [r for r, a in mode.demand.items() if a > float(pool.capacity.get(r, 0.0)) + EPS]


def find_cycle(names: list[str], after: dict[str, tuple[str, ...]]) -> list[str] | None:
    """Return one cycle as a path ``[a, b, ..., a]`` (a -> b: b is after a), starting at
    the task listed first, or None. Names in ``after`` that are not tasks are ignored."""
    known = set(names)
    graph = {n: tuple(p for p in after[n] if p in known) for n in names}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        cycle = list(exc.args[1][:-1])  # graphlib: each node comes before the one after it
        first = min(range(len(cycle)), key=lambda i: names.index(cycle[i]))
        cycle = cycle[first:] + cycle[:first]
        return [*cycle, cycle[0]]
    return None


def validate_problem(problem: Problem) -> None:
    """Raise :class:`InfeasibleError` / :class:`CycleError` if ``problem`` cannot be planned.

    Checks run in this order, each reporting every offender at once: malformed input
    (duplicate or unknown names, negative numbers, tasks without modes), cycles, tasks
    that fit no pool, non-renewable budgets that even the thriftiest modes exceed.
    The exact non-renewable combination check needs a solver and is done in ``solve``.
    """
    errs: list[str] = []
    pools = {p.name: p for p in problem.pools}
    if len(pools) != len(problem.pools):
        dup = sorted({p.name for p in problem.pools if [q.name for q in problem.pools].count(p.name) > 1})
        errs.append(f"duplicate pool names {dup}; give every pool a unique name")
    for p in problem.pools:
        neg = {r: v for r, v in p.capacity.items() if v < 0}
        if neg:
            errs.append(f"pool {p.name!r} has negative capacity {fmt_map(neg)}; use >= 0")
    for p in problem.pools:
        errs.extend(_step_errors(p))
    names = [t.name for t in problem.tasks]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            errs.append(f"duplicate task name {n!r}; task names must be unique")
        seen.add(n)
    for t in problem.tasks:
        if not t.modes:
            errs.append(f"task {t.name!r} has no modes; give it at least one Mode(pool, duration, demand)")
        for i, m in enumerate(t.modes):
            if m.pool not in pools:
                close = difflib.get_close_matches(m.pool, list(pools), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known pools: {sorted(pools)}"
                errs.append(f"task {t.name!r} mode {i} names unknown pool {m.pool!r}; {hint}")
            if m.duration < 0:
                errs.append(f"task {t.name!r} mode {i} has negative duration {fmt(m.duration)}; use >= 0")
            neg = {r: v for r, v in {**m.demand, **m.nonrenewable}.items() if v < 0}
            if neg:
                errs.append(f"task {t.name!r} mode {i} has negative demand {fmt_map(neg)}; use >= 0")
        for a in t.after:
            if a == t.name:
                errs.append(f"task {t.name!r} lists itself in `after`; remove it")
            elif a not in seen:
                close = difflib.get_close_matches(a, names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "add that task or remove the name"
                errs.append(f"task {t.name!r} is after unknown task {a!r}; {hint}")
    if errs:
        raise InfeasibleError(errs)

    cycle = find_cycle(names, {t.name: t.after for t in problem.tasks})
    if cycle:
        raise CycleError(cycle)

    caps = ", ".join(f"{p.name}={fmt_map(p.capacity)}" for p in problem.pools)
    for t in problem.tasks:
        if any(not mode_fits(m, pools[m.pool]) for m in t.modes):
            continue
        parts, lowers, adds = [], [], []
        for i, m in enumerate(t.modes):
            over = mode_fits(m, pools[m.pool])
            cap = pools[m.pool].capacity
            parts.append(
                f"mode {i} on pool {m.pool!r} demands {fmt_map(m.demand)} ("
                + ", ".join(f"{r} {fmt(m.demand[r])} > {fmt(cap.get(r, 0))}" for r in over)
                + ")"
            )
            who = "its" if len(t.modes) == 1 else f"mode {i}'s"
            lowers.append(f"lower {who} " + " and ".join(f"{r} to <= {fmt(cap.get(r, 0))}" for r in over))
            adds.append(" and ".join(f"{r} >= {fmt(a)}" for r, a in m.demand.items() if a > 0))
        add = " or ".join(dict.fromkeys(adds))
        errs.append(
            f"task {t.name!r} fits no pool: {'; '.join(parts)}. Pool capacities: {caps}. "
            f"Fix: {' or '.join(lowers)}, or add a pool with {add}."
        )
    if errs:
        raise InfeasibleError(errs)

    for r in sorted({r for t in problem.tasks for m in t.modes for r in m.nonrenewable}):
        need = sum(min(float(m.nonrenewable.get(r, 0.0)) for m in t.modes) for t in problem.tasks)
        cap = float(problem.nonrenewable_capacity.get(r, 0.0))
        if need > cap + EPS:
            errs.append(
                f"non-renewable resource {r!r}: even choosing every task's thriftiest mode "
                f"needs {fmt(need)} but the budget is {fmt(cap)}; raise the budget of {r} "
                f"to >= {fmt(need)} or lower the tasks' {r} use"
            )
    if errs:
        raise InfeasibleError(errs)


def _step_errors(pool: Pool) -> list[str]:
    """What is wrong with a pool's capacity over time: each step must lie in [0, inf),
    end after it starts, not overlap another, and stay within the pool's capacity."""
    errs: list[str] = []
    steps = sorted(pool.steps, key=lambda s: s.start)
    for i, s in enumerate(steps):
        where = f"pool {pool.name!r} step [{fmt(s.start)}, {fmt(s.end)})"
        if s.start < 0 or s.end <= s.start:
            errs.append(f"{where} is empty or starts before 0; use 0 <= start < end")
        above = {r: v for r, v in s.capacity.items() if v < 0 or v > float(pool.capacity.get(r, 0.0)) + EPS}
        if above:
            errs.append(
                f"{where} has capacity {fmt_map(above)} outside [0, the pool's capacity "
                f"{fmt_map(pool.capacity)}]; a step can only lower what the pool has"
            )
        if i and s.start < steps[i - 1].end - EPS:
            errs.append(f"{where} overlaps the step ending at {fmt(steps[i - 1].end)}; merge them into one")
    return errs
