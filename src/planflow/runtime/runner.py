"""One run of a pipeline: plan -> dispatch -> record.

1. **plan** (planning.py): the pools the run may use and where and when each step
   goes: placed by the planner (policy "plan"; durations learned from earlier runs
   where there are any) or first come, first served (policy "fifo", what Prefect does
   without a plan: there to measure what the plan buys).
2. **dispatch** (dispatch.py, executors.py): each step is released in plan order when
   its inputs are ready and its pool has room, on an executor: tasks of this flow run
   (mode "inprocess") or child flow runs on the pools' work pools (mode "distributed",
   distributed.py).
3. **record** (events.py, reporters.py): the run announces its events (planned, each
   step started/completed/failed/skipped, finished) to the reporters that subscribe:
   artifacts (plan, planned versus actual, summary, totals), progress, metrics, the run
   log, and whatever a process subscribed (the terminal's progress bar, add_listener).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

from prefect import get_run_logger
from prefect.context import get_run_context

from planflow.core.pipeline import Pipeline
from planflow.monitoring.metrics import RunRecorder, pushgateway_url_from_env
from planflow.prefect.blocks.registry import DEFAULT_POOL
from planflow.runtime import reporting
from planflow.runtime.dispatch import StepRecord
from planflow.runtime.distributed import DistributedExecutor
from planflow.runtime.events import EventBus, Reporter, RunInfo, add_listener, subscribe, subscribers
from planflow.runtime.executors import Executor, InProcessExecutor, execute
from planflow.runtime.planning import check_run_options, make_plan, plan_run, run_pools
from planflow.runtime.reporters import (
    ArtifactReporter,
    HistoryReporter,
    LogReporter,
    MetricsReporter,
    ProgressReporter,
)
from planflow.runtime.reporting import key_metrics
from planflow.runtime.tags import PIPELINE_TAG_PREFIX, PLANFLOW_TAG, tag_flow_run

# Also importable from here, where they were before the run was split in stages.
__all__ = [
    "DEFAULT_POOL",
    "PIPELINE_TAG_PREFIX",
    "PLANFLOW_TAG",
    "PipelineRunError",
    "add_listener",
    "key_metrics",
    "make_plan",
    "run_pipeline",
    "run_pools",
    "subscribe",
]


class PipelineRunError(RuntimeError):
    """A step of the pipeline failed; the message names it and its error."""


def run_reporters(pipeline: Pipeline, logger: logging.Logger | logging.LoggerAdapter) -> list[Reporter]:
    """The reporters of one run: the log, the process's subscribers (e.g. the terminal),
    progress, metrics, artifacts and the duration history, in the order each event
    reaches them."""
    recorder = RunRecorder(pipeline.name, pushgateway_url_from_env())
    return [
        LogReporter(logger),
        *subscribers(),
        ProgressReporter(),
        MetricsReporter(recorder),
        ArtifactReporter(),
        HistoryReporter(),
    ]


def make_executor(run: RunInfo) -> Executor:
    if run.mode == "distributed":
        return DistributedExecutor(
            run.pipeline, run.plan.pools, run.plan.assignments, run.params, run.flow_run_id or "local"
        )
    return InProcessExecutor(run.pipeline, run.plan.assignments, run.params)


def run_pipeline(
    pipeline: Pipeline,
    params: Mapping[str, Any] | None = None,
    policy: str = "plan",
    mode: str = "inprocess",
    local_pool: str = DEFAULT_POOL,
) -> dict[str, Any]:
    """Run `pipeline` inside the current flow run; returns a JSON-able summary.

    mode "inprocess": components are tasks of this flow run; "distributed": each is a
    flow run of its pool's component deployment (see distributed.py)."""
    check_run_options(policy, mode)
    logger = get_run_logger()
    resolved = pipeline.resolve_params(params)
    flow_run = get_run_context().flow_run
    if flow_run:
        tag_flow_run(flow_run, pipeline.name)
    plan = plan_run(pipeline, policy, mode, local_pool, params=resolved)
    run = RunInfo(pipeline, resolved, policy, mode, str(flow_run.id) if flow_run else None, plan)
    with EventBus(run_reporters(pipeline, logger), logger) as bus:
        bus.planned(run)
        records = execute(make_executor(run), pipeline, plan.assignments, plan.capacities, partial(bus.step, run))
        bus.finished(run, records)
    raise_if_failed(pipeline, records)
    return summary(run, records)


def raise_if_failed(pipeline: Pipeline, records: Mapping[str, StepRecord]) -> None:
    """PipelineRunError naming the first failed step, its error and the steps not run."""
    failed = [r for r in records.values() if r.state == "Failed"]
    if failed:
        first = failed[0]
        skipped = [r.step for r in records.values() if r.state == "Skipped"]
        raise PipelineRunError(
            f"step '{first.step}' of pipeline '{pipeline.name}' failed: "
            f"{type(first.error).__name__}: {first.error}" + (f" (not run: {', '.join(skipped)})" if skipped else "")
        ) from first.error


def summary(run: RunInfo, records: Mapping[str, StepRecord]) -> dict[str, Any]:
    """What `run_pipeline` returns (and `planflow run --json` prints)."""
    pp = run.plan.plan
    return {
        "pipeline": run.pipeline.name,
        "flow_run_id": run.flow_run_id,
        "params": dict(run.params),
        "policy": run.policy,
        "mode": run.mode,
        "makespan_s": reporting.actual_makespan(records),
        "plan": reporting.plan_figures(pp) if pp else None,
        "steps": {
            name: {
                "state": records[name].state,
                "pool": records[name].pool,
                "seconds": records[name].seconds,
                "metrics": key_metrics(records[name].result),
            }
            for name in run.plan.order
        },
    }
