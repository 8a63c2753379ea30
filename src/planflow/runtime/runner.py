"""The run flow: plan -> dispatch -> record planned versus actual.

`pipeline_flow(pipeline)` gives the Prefect flow of one pipeline; calling it runs
the pipeline as a flow run on the configured Prefect server. The planner places
every component on a pool with a start time (durations learned from earlier
runs where there are any); the plan is published as a table and a Gantt
picture. Each component then runs as a task of the flow run, released in plan
order when its inputs are ready and its pool has room. Progress is published
as a progress artifact (and to listeners, e.g. the terminal display); at the end
come planned versus actual and a summary table (component, state, pool,
duration, key metric).

`policy="fifo"` skips the planner and releases ready components first come,
first served, within the same capacities: what Prefect does without a plan. It
is there to measure what the plan buys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.context import get_run_context

from planflow.core.pipeline import Pipeline
from planflow.monitoring.metrics import RunRecorder, pushgateway_url_from_env
from planflow.planner import PlannerOptions
from planflow.prefect.blocks.registry import DEFAULT_POOL, load_pools, load_settings
from planflow.runtime import reporting
from planflow.runtime.dispatch import StepRecord, dispatch
from planflow.runtime.history import POOL_TAG, artifact_slug, recent_durations
from planflow.runtime.planning import PipelinePlan, greedy_assignments, plan_pipeline
from planflow.settings import StatePaths

PLANFLOW_TAG = "planflow"
PIPELINE_TAG_PREFIX = "pipeline:"
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
    return f"{artifact_slug(pipeline.name)}-{what}"


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


def _in_flow_run() -> bool:
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def run_pools(mode: str, local_pool: str = DEFAULT_POOL) -> tuple[dict[str, Any], set[str]]:
    """The ResourcePools a run may use, and the names of all of them.

    In-process, every component runs in this flow run's process: only the pool that
    process stands for (`local_pool`, default `local`) has capacity for it. Distributed,
    every pool does."""
    pools = load_pools()
    if mode == "distributed":
        from planflow.runtime.distributed import readiness

        _, problems = readiness({pool.work_pool for pool in pools.values()})
        usable = {n: p for n, p in pools.items() if p.work_pool not in problems}
        logger = get_run_logger() if _in_flow_run() else logging.getLogger("planflow")
        for work_pool, why in problems.items():
            logger.warning("work pool '%s' is left out of the plan: %s", work_pool, "; ".join(why))
        if not usable:
            from planflow.runtime.distributed import DeploymentMissingError

            lines = [p for pool in sorted(problems) for p in problems[pool]]
            raise DeploymentMissingError(
                "distributed mode has no ready work pool:\n" + "\n".join(f"  - {p}" for p in lines)
            )
        return usable, set(pools)
    if local_pool not in pools:
        raise ValueError(
            f"pool '{local_pool}' has no ResourcePool block (pools: {', '.join(sorted(pools))}). "
            f"Fix: planflow pools set {local_pool} --cpu N --mem-gib N, or choose another pool"
        )
    return {local_pool: pools[local_pool]}, set(pools)


def make_plan(
    pipeline: Pipeline,
    mode: str = "inprocess",
    local_pool: str = DEFAULT_POOL,
    pools: tuple[dict[str, Any], set[str]] | None = None,
) -> PipelinePlan:
    """Plan `pipeline` over the ResourcePool blocks usable in `mode`, with the
    PlannerSettings block and durations learned from the pipeline's recent runs."""
    usable, known = pools if pools is not None else run_pools(mode, local_pool)
    settings = load_settings()
    capacities = {name: pool.capacity() for name, pool in usable.items()}
    costs = {name: pool.cost_per_hour for name, pool in usable.items()}
    history = recent_durations(pipeline.name, pipeline.steps, settings.history_runs)
    options = PlannerOptions(
        solver=settings.solver, time_limit_s=settings.time_limit_s, threads=settings.threads, mip_gap=settings.mip_gap
    )
    return plan_pipeline(pipeline, capacities, costs, options, history, known)


def _publish_plan(pipeline: Pipeline, pp: PipelinePlan) -> None:
    create_table_artifact(
        key=_artifact_key(pipeline, "plan"),
        table=reporting.plan_rows(pp),
        description=f"{pipeline.name}: the plan (pool, start, finish, resources, estimate source)",
    )
    png = reporting.gantt_png(pp, title=f"{pipeline.name}: plan")
    create_markdown_artifact(
        key=_artifact_key(pipeline, "plan-figures"),
        markdown=reporting.plan_markdown(pp, pipeline.name, png),
        description=f"{pipeline.name}: makespan, bound, gap, solver and the Gantt chart",
    )


def _publish_actual(
    pipeline: Pipeline, pp: PipelinePlan, records: Mapping[str, StepRecord], flow_run_id: str | None
) -> None:
    png = reporting.gantt_png(pp, records, title=f"{pipeline.name}: planned and actual")
    create_markdown_artifact(
        key=_artifact_key(pipeline, "planned-vs-actual"),
        markdown=reporting.actual_markdown(pp, records, pipeline.name, png),
        description=f"{pipeline.name}: start delay and overrun per component, makespan achieved",
    )
    if flow_run_id:
        folder = StatePaths.discover().home / "plans"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{flow_run_id}.png").write_bytes(png)


def _record_plan(recorder: RunRecorder, pp: PipelinePlan, capacities: Mapping[str, Mapping[str, float]]) -> None:
    plan = pp.plan
    recorder.plan(plan.makespan, plan.lower_bound, plan.gap, plan.solve_seconds, plan.status, plan.solver)
    for pool, peaks in reporting.peak_demand(pp).items():
        for resource, demand in peaks.items():
            capacity = capacities[pool].get(resource, 0.0)
            if resource == "mem_gib":  # Prometheus base unit: bytes
                resource, demand, capacity = "memory_bytes", demand * 2**30, capacity * 2**30
            recorder.pool_demand(pool, resource, demand, capacity)
    recorder.push()


def _record_step(recorder: RunRecorder, event: str, record: StepRecord, assignment: Any) -> None:
    if event == "started":
        planned = None
        delay = None
        if assignment.planned_start is not None:
            planned = assignment.planned_finish - assignment.planned_start
            delay = (record.started or 0.0) - assignment.planned_start
        recorder.component(record.step, record.pool, "running", None, planned, delay)
    elif event in ("completed", "failed"):
        recorder.component(record.step, record.pool, event, record.seconds)
    else:
        return
    recorder.push()


def _tag_flow_run(flow_run: Any, pipeline: Pipeline) -> None:
    """Give the flow run the tags planflow's automations match (`planflow`,
    `pipeline:NAME`), whoever started it: `planflow run`, a deployment a team made
    with `prefect deploy`, or a plain call of the flow."""
    current = set(flow_run.tags or [])
    wanted = {PLANFLOW_TAG, f"{PIPELINE_TAG_PREFIX}{pipeline.name}"}
    if not wanted <= current:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, tags=sorted(current | wanted))


def run_pipeline(
    pipeline: Pipeline,
    params: Mapping[str, Any] | None = None,
    policy: str = "plan",
    mode: str = "inprocess",
    local_pool: str = DEFAULT_POOL,
) -> dict[str, Any]:
    """Run `pipeline` inside the current flow run; returns a JSON-able summary.

    mode "inprocess": components are tasks of this flow run; "distributed": each is a
    flow run of its pool's component deployment (see flows.distributed)."""
    if policy not in ("plan", "fifo"):
        raise ValueError(f"policy={policy!r}: must be 'plan' or 'fifo'")
    if mode not in ("inprocess", "distributed"):
        raise ValueError(f"mode={mode!r}: must be 'inprocess' or 'distributed'")
    logger = get_run_logger()
    resolved = pipeline.resolve_params(params)
    context = get_run_context()
    flow_run_id = str(context.flow_run.id) if context.flow_run else None
    if context.flow_run:
        _tag_flow_run(context.flow_run, pipeline)
    pools, known = run_pools(mode, local_pool)
    capacities = {name: pool.capacity() for name, pool in pools.items()}
    recorder = RunRecorder(pipeline.name, pushgateway_url_from_env())
    pp: PipelinePlan | None = None
    if policy == "plan":
        pp = make_plan(pipeline, pools=(pools, known))
        assignments = pp.assignments
        _publish_plan(pipeline, pp)
        _record_plan(recorder, pp, capacities)
        logger.info(
            "Plan for %s: makespan %.2f s, lower bound %.2f s, gap %.1f%%, %s by %s in %.2f s",
            pipeline.name,
            pp.plan.makespan,
            pp.plan.lower_bound,
            100 * pp.plan.gap,
            pp.plan.status,
            pp.plan.solver,
            pp.plan.solve_seconds,
        )
    else:
        assignments = greedy_assignments(pipeline, capacities, {n: p.cost_per_hour for n, p in pools.items()}, known)
    order = sorted(assignments, key=lambda s: assignments[s].priority)
    logger.info(
        "Running %s (%d components, policy %s) with %s on pools %s",
        pipeline.name,
        len(order),
        policy,
        resolved,
        sorted({a.pool for a in assignments.values()}),
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
        _record_step(recorder, event, record, assignments[record.step])
        if event in ("completed", "failed", "skipped"):
            finished_count += 1
            update_progress_artifact(progress_id, 100.0 * finished_count / len(order))
        if event == "completed":
            logger.info(
                "%s completed on %s in %.2f s %s",
                record.step,
                record.pool,
                record.seconds or 0.0,
                _fmt_metrics(key_metrics(record.result)),
            )

    def start(step: str, outputs: dict[str, Any]):
        component = pipeline.steps[step].component
        task = component.with_options(
            name=step,
            task_run_name=step,
            tags={*component.tags, f"{POOL_TAG}{assignments[step].pool}", f"{PIPELINE_TAG_PREFIX}{pipeline.name}"},
        )
        return task.submit(**pipeline.step_kwargs(step, resolved, outputs))

    upstream = {name: pipeline.upstream(name) for name in pipeline.steps}
    if mode == "distributed":
        records = _dispatch_distributed(
            pipeline, pools, assignments, capacities, resolved, flow_run_id or "local", publish
        )
    else:
        records, _ = dispatch(upstream, assignments, capacities, start, publish)
    if pp is not None:
        _publish_actual(pipeline, pp, records, flow_run_id)
    failed_any = any(r.state == "Failed" for r in records.values())
    recorder.run_finished(
        "failed" if failed_any else "completed", reporting.actual_makespan(records), pp.plan.makespan if pp else None
    )
    recorder.push()

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
            f"{type(first.error).__name__}: {first.error}" + (f" (not run: {', '.join(skipped)})" if skipped else "")
        ) from first.error

    return {
        "pipeline": pipeline.name,
        "flow_run_id": flow_run_id,
        "params": resolved,
        "policy": policy,
        "mode": mode,
        "makespan_s": reporting.actual_makespan(records),
        "plan": reporting.plan_figures(pp) if pp else None,
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


def _dispatch_distributed(pipeline, pools, assignments, capacities, params, run_key, publish):
    from concurrent.futures import ThreadPoolExecutor

    from prefect.results import ResultStore

    from planflow.prefect.jobvars import job_variables, require_fits
    from planflow.runtime.distributed import check_ready, remote_starter

    work_pools = {name: pool.work_pool for name, pool in pools.items()}
    found = check_ready({work_pools[a.pool] for a in assignments.values()})

    def variables(work_pool: str, a) -> dict[str, Any]:
        d = a.demand
        return job_variables(
            found[work_pool].type,
            cpu=d.get("cpu", 1.0),
            gpu=int(d.get("gpu", 0)),
            mem_gib=d.get("mem_gib", 1.0),
            gpu_pool=pools[a.pool].gpu > 0,
        )

    for a in assignments.values():  # a plan asking more than a pool's template allows fails now
        work_pool = work_pools[a.pool]
        require_fits(variables(work_pool, a), found[work_pool].base_job_template, component=a.step, pool=work_pool)

    upstream = {name: pipeline.upstream(name) for name in pipeline.steps}
    with ThreadPoolExecutor(max_workers=max(2, len(assignments))) as executor:
        start = remote_starter(pipeline, assignments, work_pools, params, run_key, variables, executor)
        records, _ = dispatch(upstream, assignments, capacities, start, publish)
    store = ResultStore()
    for record in records.values():  # outputs stay in storage; read them back for key metrics
        if record.state == "Completed" and isinstance(record.result, str):
            record.result = store.read(record.result).result
    return records
