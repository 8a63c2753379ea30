"""From a pipeline and the ResourcePool blocks to a plan and an assignment of every step.

Pools are read only through the ResourcePool blocks. A step's allowed pools are
its spec's `pools` (any pool when empty); a step that fits none of them is
reported with its demand, every pool's capacity and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

from planflow.core.pipeline import Pipeline
from planflow.planner import Mode, Plan, PlannerOptions, Pool, Problem, Task, solve
from planflow.runtime.dispatch import RESOURCES, Assignment
from planflow.runtime.history import Estimate, estimate


class PoolError(ValueError):
    """A step names a pool that does not exist, or fits no pool it may use."""


def _fmt(vector: Mapping[str, float]) -> str:
    return ", ".join(f"{r}={vector.get(r, 0.0):g}" for r in RESOURCES)


def allowed_pools(
    pipeline: Pipeline,
    capacities: Mapping[str, Mapping[str, float]],
    known_pools: set[str] | None = None,
) -> dict[str, list[str]]:
    """Every step's usable pools among `capacities` (allowed by its spec and big
    enough), or PoolError listing every step that has none. Pool names in a spec are
    checked against `known_pools` (default: the pools in `capacities`)."""
    known = known_pools if known_pools is not None else set(capacities)
    problems: list[str] = []
    allowed: dict[str, list[str]] = {}
    for name, step in pipeline.steps.items():
        spec, demand = step.spec, step.spec.demand()
        unknown = [p for p in spec.pools if p not in known]
        for pool in unknown:
            match = difflib.get_close_matches(pool, list(capacities), n=1)
            hint = f" Did you mean '{match[0]}'?" if match else ""
            problems.append(
                f"step '{name}' names pool '{pool}', which has no ResourcePool block.{hint} "
                f"Known pools: {', '.join(sorted(known))}. Fix: create the block "
                f"(`planflow pools set {pool} --cpu N --mem-gib N`) or change the component's pools"
            )
        candidates = [p for p in capacities if spec.allows(p)]
        if not candidates and not unknown:
            problems.append(
                f"step '{name}' may run only on pools {list(spec.pools)}, and this run uses "
                f"{', '.join(capacities)}. Fix: run it where those pools are (e.g. --mode "
                f"distributed), or add {', '.join(repr(p) for p in capacities)} to its pools"
            )
        fitting = [p for p in candidates if all(demand[r] <= capacities[p].get(r, 0.0) + 1e-9 for r in RESOURCES)]
        if candidates and not fitting:
            pools = "; ".join(f"{p} ({_fmt(capacities[p])})" for p in candidates)
            short = {r: demand[r] for r in RESOURCES if all(demand[r] > capacities[p].get(r, 0.0) for p in candidates)}
            fix = (
                " and ".join(
                    f"lower its {r} to <= {max(capacities[p].get(r, 0.0) for p in candidates):g}" for r in short
                )
                or "lower its demand"
            )
            problems.append(
                f"step '{name}' needs {_fmt(demand)} but fits no pool it may use: {pools}. "
                f"Fix: {fix}, or add a ResourcePool with "
                + ", ".join(f"{r} >= {v:g}" for r, v in (short or demand).items())
            )
        allowed[name] = fitting
    if problems:
        raise PoolError(f"pipeline '{pipeline.name}' cannot be placed:\n" + "\n".join(f"  - {p}" for p in problems))
    return allowed


def greedy_assignments(
    pipeline: Pipeline,
    capacities: Mapping[str, Mapping[str, float]],
    costs: Mapping[str, float] | None = None,
    known_pools: set[str] | None = None,
) -> dict[str, Assignment]:
    """Each step on its fastest usable pool (then cheapest), released in
    topological order. This is how a run is dispatched without a plan."""
    allowed = allowed_pools(pipeline, capacities, known_pools)
    costs = costs or {}
    assignments = {}
    for index, name in enumerate(pipeline.topological_order()):
        spec = pipeline.steps[name].spec
        pool = min(allowed[name], key=lambda p: (spec.seconds_on(p), costs.get(p, 0.0), p))
        assignments[name] = Assignment(step=name, pool=pool, demand=spec.demand(), priority=index)
    return assignments


@dataclass(frozen=True)
class PipelinePlan:
    """A pipeline's plan, the dispatch order it implies, and where estimates came from."""

    plan: Plan
    assignments: dict[str, Assignment]
    estimates: dict[tuple[str, str], Estimate]
    problem: Problem

    def source_of(self, step: str) -> str:
        return self.estimates[(step, self.plan[step].pool)].source


def build_problem(
    pipeline: Pipeline,
    capacities: Mapping[str, Mapping[str, float]],
    costs: Mapping[str, float],
    history: Mapping[tuple[str, str], list[float]] | None = None,
    known_pools: set[str] | None = None,
) -> tuple[Problem, dict[tuple[str, str], Estimate]]:
    """The planner's problem: one mode per usable pool, with learned or declared durations."""
    allowed = allowed_pools(pipeline, capacities, known_pools)
    history = history or {}
    estimates: dict[tuple[str, str], Estimate] = {}
    tasks = []
    for name in pipeline.topological_order():
        spec = pipeline.steps[name].spec
        modes = []
        for pool in allowed[name]:
            est = estimate(spec.seconds_on(pool), pool in spec.est_seconds_by_pool, history, name, pool)
            estimates[(name, pool)] = est
            modes.append(Mode(pool=pool, duration=est.seconds, demand=spec.demand()))
        tasks.append(Task(name=name, modes=tuple(modes), after=pipeline.upstream(name)))
    pools = tuple(Pool(name=p, capacity=dict(capacities[p]), cost_per_hour=costs.get(p, 0.0)) for p in capacities)
    return Problem(tasks=tuple(tasks), pools=pools), estimates


def plan_pipeline(
    pipeline: Pipeline,
    capacities: Mapping[str, Mapping[str, float]],
    costs: Mapping[str, float],
    options: PlannerOptions,
    history: Mapping[tuple[str, str], list[float]] | None = None,
    known_pools: set[str] | None = None,
) -> PipelinePlan:
    """Plan the pipeline; assignments release steps in planned start order."""
    problem, estimates = build_problem(pipeline, capacities, costs, history, known_pools)
    plan = solve(problem, options)
    assignments = {
        t.name: Assignment(
            step=t.name,
            pool=t.pool,
            demand=dict(t.demand),
            priority=t.start,
            planned_start=t.start,
            planned_finish=t.finish,
        )
        for t in plan.order_tasks()
    }
    return PipelinePlan(plan, assignments, estimates, problem)
