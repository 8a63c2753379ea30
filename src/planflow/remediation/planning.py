"""What a remediation asks the planner.

- failover: the plan of a moved run's pipeline on the backup pool alone (its
  capacities), for the record;
- rescale: the makespan of a pool's backlog with n, n+1, ... worker slots (what one more
  worker buys), and the fewest workers that get within a tolerance of the best.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun

from planflow.core import discovery
from planflow.planner import Mode, PlannerOptions, Pool, Problem, Task, solve
from planflow.prefect.blocks.registry import load_settings
from planflow.prefect.blocks.resource_pool import ResourcePool
from planflow.runtime.planning import plan_pipeline

DEFAULT_RUN_SECONDS = 30.0


def replan_on_backup(flow_name: str, backup_name: str, backup: ResourcePool) -> dict[str, Any]:
    """The pipeline's plan on the backup pool alone: makespan, status, pools used; or the
    error when planflow cannot plan it (a flow that is not one of its pipelines)."""
    try:
        pipeline = discovery.get(flow_name)
        settings = load_settings()
        planned = plan_pipeline(
            pipeline,
            {backup_name: backup.capacity()},
            {backup_name: backup.cost_per_hour},
            PlannerOptions(solver=settings.solver, time_limit_s=min(5.0, settings.time_limit_s)),
            None,
            {backup_name},
        )
        return {
            "pipeline": pipeline.name,
            "makespan_s": round(planned.plan.makespan, 3),
            "status": planned.plan.status,
            "pools": sorted({a.pool for a in planned.assignments.values()}),
        }
    except Exception as exc:  # noqa: BLE001 - a run of a flow planflow does not know
        return {"pipeline": flow_name, "error": f"{type(exc).__name__}: {exc}"[:300]}


def backlog_curve(backlog_seconds: list[float], counts: Iterable[int]) -> dict[int, float]:
    """The planner's makespan of the backlog (one task per waiting run, its estimated
    duration) with each number of worker slots in `counts`: what more workers buy."""
    counts = list(counts)
    if not backlog_seconds:
        return {n: 0.0 for n in counts}
    tasks = tuple(
        Task(f"run{i}", (Mode("workers", max(0.1, s), {"slot": 1.0}),)) for i, s in enumerate(backlog_seconds)
    )
    return {
        n: float(
            solve(
                Problem(tasks, (Pool("workers", {"slot": float(max(1, n))}),)), PlannerOptions(time_limit_s=2.0)
            ).makespan
        )
        for n in counts
    }


def workers_to_reach(curve: dict[int, float], tolerance: float = 0.05) -> int:
    """The fewest workers whose planned makespan is within `tolerance` of the best the
    curve offers (more would cost a worker and buy almost nothing)."""
    best = min(curve.values())
    return min(n for n, makespan in curve.items() if makespan <= best * (1 + tolerance) + 1e-9)


def estimate_seconds(client: SyncPrefectClient, run: FlowRun) -> float:
    """A waiting run's expected duration: its pipeline's critical path, else 30 s."""
    try:
        flow = client.read_flow(run.flow_id)
        return float(discovery.get(flow.name).totals()["critical_path_seconds"]) or DEFAULT_RUN_SECONDS
    except Exception:  # noqa: BLE001 - a flow planflow does not know
        return DEFAULT_RUN_SECONDS
