"""From a pipeline and the ResourcePool blocks to an assignment of every step.

Pools are read only through the ResourcePool blocks. A step's allowed pools are
its spec's `pools` (any pool when empty); a step that fits none of them is
reported with its demand, every pool's capacity and the fix.
"""

from __future__ import annotations

import difflib
from typing import Mapping

from flows.dispatch import RESOURCES, Assignment
from flows.pipeline import Pipeline


class PoolError(ValueError):
    """A step names a pool that does not exist, or fits no pool it may use."""


def _fmt(vector: Mapping[str, float]) -> str:
    return ", ".join(f"{r}={vector.get(r, 0.0):g}" for r in RESOURCES)


def allowed_pools(pipeline: Pipeline, capacities: Mapping[str, Mapping[str, float]]) -> dict[str, list[str]]:
    """Every step's usable pools (allowed by its spec and big enough), or PoolError
    listing every step that has none."""
    problems: list[str] = []
    allowed: dict[str, list[str]] = {}
    for name, step in pipeline.steps.items():
        spec, demand = step.spec, step.spec.demand()
        unknown = [p for p in spec.pools if p not in capacities]
        for pool in unknown:
            match = difflib.get_close_matches(pool, list(capacities), n=1)
            hint = f" Did you mean '{match[0]}'?" if match else ""
            problems.append(
                f"step '{name}' names pool '{pool}', which has no ResourcePool block.{hint} "
                f"Known pools: {', '.join(capacities)}. Fix: create the block "
                f"(`planflow pools set {pool} --cpu N --mem-gib N`) or change the component's pools"
            )
        candidates = [p for p in capacities if spec.allows(p)]
        fitting = [
            p for p in candidates
            if all(demand[r] <= capacities[p].get(r, 0.0) + 1e-9 for r in RESOURCES)
        ]
        if candidates and not fitting:
            pools = "; ".join(f"{p} ({_fmt(capacities[p])})" for p in candidates)
            short = {
                r: demand[r] for r in RESOURCES
                if all(demand[r] > capacities[p].get(r, 0.0) for p in candidates)
            }
            fix = " and ".join(
                f"lower its {r} to <= {max(capacities[p].get(r, 0.0) for p in candidates):g}"
                for r in short
            ) or "lower its demand"
            problems.append(
                f"step '{name}' needs {_fmt(demand)} but fits no pool it may use: {pools}. "
                f"Fix: {fix}, or add a ResourcePool with "
                + ", ".join(f"{r} >= {v:g}" for r, v in (short or demand).items())
            )
        allowed[name] = fitting
    if problems:
        raise PoolError(
            f"pipeline '{pipeline.name}' cannot be placed:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return allowed


def greedy_assignments(
    pipeline: Pipeline,
    capacities: Mapping[str, Mapping[str, float]],
    costs: Mapping[str, float] | None = None,
) -> dict[str, Assignment]:
    """Each step on its fastest usable pool (then cheapest), released in
    topological order. This is how a run is dispatched without a plan."""
    allowed = allowed_pools(pipeline, capacities)
    costs = costs or {}
    assignments = {}
    for index, name in enumerate(pipeline.topological_order()):
        spec = pipeline.steps[name].spec
        pool = min(allowed[name], key=lambda p: (spec.seconds_on(p), costs.get(p, 0.0), p))
        assignments[name] = Assignment(step=name, pool=pool, demand=spec.demand(), priority=index)
    return assignments
