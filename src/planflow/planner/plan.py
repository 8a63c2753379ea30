"""The result of planning: a start time, pool and mode per task, with bounds and status.

``plan_violations`` is an independent checker (it does not reuse the scheduler's code):
precedence, mode/pool consistency, renewable capacity at every instant, non-renewable
budgets.  Tests run it on every plan they produce.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .problem import Problem, fmt_map


@dataclass(frozen=True)
class PlannedTask:
    name: str
    pool: str
    mode: int  # index into task.modes
    start: float
    finish: float
    duration: float
    demand: dict[str, float]


@dataclass(frozen=True)
class Plan:
    """A schedule. ``plan["train"]`` and ``plan.tasks["train"]`` give a :class:`PlannedTask`.

    status: "optimal" (makespan == lower_bound, proven), "feasible" (improved by the MILP,
    not proven), "heuristic" (list-scheduling result: the MILP was skipped or found nothing
    better in time).  ``gap = (makespan - lower_bound) / makespan``.
    """

    tasks: dict[str, PlannedTask]
    makespan: float
    lower_bound: float
    bounds: dict[str, float]
    gap: float
    status: str
    solver: str
    solve_seconds: float
    heuristic_makespan: float
    cost: float
    notes: tuple[str, ...] = field(default=())

    def __getitem__(self, name: str) -> PlannedTask:
        return self.tasks[name]

    def __iter__(self) -> Iterator[PlannedTask]:
        return iter(self.order_tasks())

    def __len__(self) -> int:
        return len(self.tasks)

    def order_tasks(self) -> list[PlannedTask]:
        return sorted(self.tasks.values(), key=lambda t: (t.start, t.finish, t.name))

    def order(self) -> list[str]:
        """Task names by start time (ties: finish, then name)."""
        return [t.name for t in self.order_tasks()]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tasks"] = [asdict(t) for t in self.order_tasks()]
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        tasks = d["tasks"]
        if isinstance(tasks, dict):
            tasks = list(tasks.values())
        pts = {t["name"]: PlannedTask(**{**t, "demand": dict(t["demand"])}) for t in tasks}
        rest = {k: v for k, v in d.items() if k != "tasks"}
        rest["bounds"] = dict(rest.get("bounds", {}))
        rest["notes"] = tuple(rest.get("notes", ()))
        return cls(tasks=pts, **rest)


def plan_violations(problem: Problem, plan: Plan, tol: float = 1e-6) -> list[str]:
    """Every way ``plan`` breaks ``problem`` (empty list = valid)."""
    out: list[str] = []
    pools = {p.name: p for p in problem.pools}
    tasks = {t.name: t for t in problem.tasks}
    if set(plan.tasks) != set(tasks):
        out.append(
            f"plan tasks differ: missing {sorted(set(tasks) - set(plan.tasks))}, "
            f"extra {sorted(set(plan.tasks) - set(tasks))}"
        )
        return out
    for name, pt in plan.tasks.items():
        t = tasks[name]
        if not 0 <= pt.mode < len(t.modes):
            out.append(f"{name}: mode {pt.mode} out of range")
            continue
        m = t.modes[pt.mode]
        if m.pool != pt.pool:
            out.append(f"{name}: pool {pt.pool} but mode {pt.mode} is on {m.pool}")
        if abs(pt.duration - m.duration) > tol or abs(pt.finish - pt.start - m.duration) > tol:
            out.append(f"{name}: duration/finish inconsistent with mode {pt.mode}")
        if pt.start < -tol:
            out.append(f"{name}: negative start {pt.start}")
        for a in t.after:
            if pt.start < plan.tasks[a].finish - tol:
                out.append(f"{name} starts at {pt.start} before {a} finishes at {plan.tasks[a].finish}")
    if out:
        return out
    # Usage is piecewise constant and only rises at start times, capacity only falls where a
    # capacity step starts: checking those instants suffices.
    for pool in pools.values():
        on = [pt for pt in plan.tasks.values() if pt.pool == pool.name and pt.finish - pt.start > tol]
        for t in sorted({pt.start for pt in on} | {s.start for s in pool.steps}):
            use: dict[str, float] = {}
            for q in on:
                if q.start <= t + tol and q.finish > t + tol:
                    for r, a in tasks[q.name].modes[q.mode].demand.items():
                        use[r] = use.get(r, 0.0) + a
            cap = pool.capacity_at(t)
            over = {r: u for r, u in use.items() if u > float(cap.get(r, 0.0)) + tol}
            if over:
                out.append(f"pool {pool.name} over capacity at t={t}: uses {fmt_map(over)}, capacity {fmt_map(cap)}")
                break
    nr: dict[str, float] = {}
    for name, pt in plan.tasks.items():
        for r, a in tasks[name].modes[pt.mode].nonrenewable.items():
            nr[r] = nr.get(r, 0.0) + a
    for r, u in nr.items():
        if u > float(problem.nonrenewable_capacity.get(r, 0.0)) + tol:
            out.append(f"non-renewable {r} uses {u} > budget {problem.nonrenewable_capacity.get(r, 0.0)}")
    ms = max((pt.finish for pt in plan.tasks.values()), default=0.0)
    if abs(ms - plan.makespan) > tol:
        out.append(f"makespan {plan.makespan} != latest finish {ms}")
    return out
