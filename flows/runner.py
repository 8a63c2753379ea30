"""The run flow: place every component, dispatch it, record what happened.

`pipeline_flow(pipeline)` gives the Prefect flow of one pipeline; calling it runs
the pipeline as a flow run on the configured Prefect server. Each component
runs as a task of that flow run, released by the dispatcher when its inputs are
ready and its pool has room. Progress is published as a Prefect progress
artifact (and to any listener, e.g. the terminal display); at the end a summary
table artifact lists component, state, pool, duration and key metric.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import get_run_context
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.registry import load_pools
from flows.dispatch import StepRecord, dispatch
from flows.pipeline import Pipeline
from flows.planning import greedy_assignments

Listener = Callable[[str, StepRecord], None]
_listeners: list[Listener] = []


class PipelineRunError(RuntimeError):
    """A step of the pipeline failed; the message names it and its error."""


def add_listener(listener: Listener) -> Callable[[], None]:
    """Receive (event, record) for every step event of runs in this process;
    returns a function that removes the listener."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def key_metrics(result: Any) -> dict[str, float]:
    """The headline figures of a step's output, when it offers `key_metrics()`."""
    method = getattr(result, "key_metrics", None)
    if callable(method):
        try:
            return {k: float(v) for k, v in method().items()}
        except (TypeError, ValueError):
            return {}
    return {}


def _artifact_key(pipeline: Pipeline, what: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in pipeline.name.lower()).strip("-")
    return f"{slug}-{what}"


def _fmt_metrics(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def _summary_rows(records: Mapping[str, StepRecord], order: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in order:
        record = records[name]
        rows.append(
            {
                "component": name,
                "state": record.state,
                "pool": record.pool,
                "seconds": None if record.seconds is None else round(record.seconds, 3),
                "key_metric": _fmt_metrics(key_metrics(record.result)),
            }
        )
    return rows


def _totals_markdown(pipeline: Pipeline, records: Mapping[str, StepRecord]) -> str:
    totals = pipeline.totals()
    finished = [r.finished for r in records.values() if r.finished is not None]
    actual = max(finished, default=0.0)
    lines = [
        f"# {pipeline.name}: resource demand and time",
        "",
        "| figure | value |",
        "|---|---|",
        f"| components | {totals['components']} |",
        f"| CPU core-seconds (estimated) | {totals['cpu_seconds']:.1f} |",
        f"| GPU-seconds (estimated) | {totals['gpu_seconds']:.1f} |",
        f"| memory GiB-seconds (estimated) | {totals['mem_gib_seconds']:.1f} |",
        f"| sum of estimates (s) | {totals['total_seconds']:.1f} |",
        f"| critical path (s) | {totals['critical_path_seconds']:.1f} |",
        f"| wall time of this run (s) | {actual:.2f} |",
    ]
    return "\n".join(lines)


def run_pipeline(pipeline: Pipeline, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run `pipeline` inside the current flow run; returns a JSON-able summary."""
    logger = get_run_logger()
    resolved = pipeline.resolve_params(params)
    pools = load_pools()
    capacities = {name: pool.capacity() for name, pool in pools.items()}
    costs = {name: pool.cost_per_hour for name, pool in pools.items()}
    assignments = greedy_assignments(pipeline, capacities, costs)
    order = sorted(assignments, key=lambda s: assignments[s].priority)
    logger.info(
        "Running %s (%d components) with %s on pools %s",
        pipeline.name, len(order), resolved, sorted({a.pool for a in assignments.values()}),
    )

    progress_id = create_progress_artifact(
        progress=0.0,
        key=_artifact_key(pipeline, "progress"),
        description=f"{pipeline.name}: share of components finished",
    )
    finished_count = 0

    def publish(event: str, record: StepRecord) -> None:
        nonlocal finished_count
        for listener in list(_listeners):
            listener(event, record)
        if event in ("completed", "failed", "skipped"):
            finished_count += 1
            update_progress_artifact(progress_id, 100.0 * finished_count / len(order))
        if event == "completed":
            logger.info("%s completed on %s in %.2f s %s", record.step, record.pool,
                        record.seconds or 0.0, _fmt_metrics(key_metrics(record.result)))

    def start(step: str, outputs: dict[str, Any]):
        task = pipeline.steps[step].component.with_options(name=step, task_run_name=step)
        return task.submit(**pipeline.step_kwargs(step, resolved, outputs))

    upstream = {name: pipeline.upstream(name) for name in pipeline.steps}
    records, _ = dispatch(upstream, assignments, capacities, start, publish)

    create_table_artifact(
        key=_artifact_key(pipeline, "summary"),
        table=_summary_rows(records, order),
        description=f"{pipeline.name}: component, state, pool, duration and key metric",
    )
    create_markdown_artifact(
        key=_artifact_key(pipeline, "totals"),
        markdown=_totals_markdown(pipeline, records),
        description=f"{pipeline.name}: total resource demand and time",
    )
    failed = [r for r in records.values() if r.state == "Failed"]
    if failed:
        first = failed[0]
        skipped = [r.step for r in records.values() if r.state == "Skipped"]
        raise PipelineRunError(
            f"step '{first.step}' of pipeline '{pipeline.name}' failed: "
            f"{type(first.error).__name__}: {first.error}"
            + (f" (not run: {', '.join(skipped)})" if skipped else "")
        ) from first.error

    context = get_run_context()
    return {
        "pipeline": pipeline.name,
        "flow_run_id": str(context.flow_run.id) if context.flow_run else None,
        "params": resolved,
        "steps": {
            name: {
                "state": records[name].state,
                "pool": records[name].pool,
                "seconds": records[name].seconds,
                "metrics": key_metrics(records[name].result),
            }
            for name in order
        },
    }


def pipeline_flow(pipeline: Pipeline, **options: Any):
    """The Prefect flow of one pipeline, named after it."""
    workers = max(4, min(64, len(pipeline.steps)))
    settings: dict[str, Any] = dict(
        name=pipeline.name,
        description=pipeline.description or f"planflow pipeline {pipeline.name}",
        task_runner=ThreadPoolTaskRunner(max_workers=workers),
        retries=pipeline.retries,
        retry_delay_seconds=2,
        persist_result=True,
        log_prints=True,
    )
    settings.update(options)

    @flow(**settings)
    def run(params: dict[str, Any] | None = None) -> dict[str, Any]:
        return run_pipeline(pipeline, params or {})

    run.pipeline = pipeline  # type: ignore[attr-defined]
    return run
