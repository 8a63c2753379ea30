"""`to_flow(pipeline)`: the Prefect flow of one pipeline, with a typed signature.

The flow's parameters are the pipeline's own (names, types from the components'
hints, defaults), then `policy`, `mode`, `local_pool` and `refresh`. Prefect builds the
deployment's parameter schema from that signature, so the UI's Run form shows typed
fields and `prefect deployment run NAME -p n=500` is validated.

    >>> fraud_risk = to_flow(pipeline)
    >>> fraud_risk(n_customers=500, policy="fifo")

Every flow run carries the tags `planflow` and `pipeline:<name>`, so planflow's
automations (retry, crash detection) cover the runs a team deploys itself.
"""

from __future__ import annotations

import keyword
import logging
from typing import Annotated, Any, Literal

from prefect import Flow
from pydantic import Field

from planflow.core.pipeline import Pipeline, PipelineError
from planflow.core.steps import REQUIRED
from planflow.prefect.blocks.registry import DEFAULT_POOL
from planflow.runtime import tags
from planflow.runtime.caching import result_serializer
from planflow.runtime.early_reads import early_reads
from planflow.runtime.eta_history import known_main_pool
from planflow.runtime.run_end import finish_reporting
from planflow.runtime.runner import run_pipeline
from planflow.runtime.task_runner import InterruptibleThreadPoolTaskRunner
from planflow.runtime.watchdog import unwatch_run, watch_run

Policy = Literal["plan", "fifo"]
Mode = Literal["inprocess", "distributed", "dask"]
RUN_OPTIONS = ("policy", "mode", "local_pool", "refresh")
DEFAULT_POLICY = "plan"  # the flow's default, which its call's early reads assume too
DEFAULT_MODE = "inprocess"  # ... likewise


def pipeline_tags(pipeline: Pipeline) -> list[str]:
    return tags.pipeline_tags(pipeline.name)


def _typed_function(pipeline: Pipeline):
    """A function whose keyword-only parameters are the pipeline's own, typed, then the
    run options. Written out (as dataclasses does) so that every tool that reads a
    signature, Prefect's schema and its validation alike, sees real parameters."""
    types = pipeline.param_types()
    clash = sorted(set(pipeline.params) & set(RUN_OPTIONS))
    bad = sorted(p for p in pipeline.params if not p.isidentifier() or keyword.iskeyword(p))
    if clash or bad:
        raise PipelineError(
            f"pipeline '{pipeline.name}': parameter name(s) {', '.join(clash + bad)} cannot be flow "
            f"parameters ({', '.join(RUN_OPTIONS)} are planflow's run options). Fix: rename them"
        )
    namespace: dict[str, Any] = {
        "_run": run_pipeline,
        "_pipeline": pipeline,
        "Policy": Policy,
        "Mode": Mode,
        "Any": Any,
    }
    params = []
    work = pipeline.work_params()
    for index, (name, default) in enumerate(pipeline.params.items()):
        kind = types.get(name, Any)
        if name in work and kind in (int, float):  # the deployment's schema says >= 0: refused before a run
            kind = Annotated[kind, Field(ge=0)]
        namespace[f"_t{index}"], namespace[f"_d{index}"] = kind, default
        # REQUIRED: no default, so Prefect's schema marks it required (keyword-only: any order)
        params.append(f"{name}: _t{index}" if default is REQUIRED else f"{name}: _t{index} = _d{index}")
    namespace["_default_pool"] = DEFAULT_POOL
    params += [
        f"policy: Policy = {DEFAULT_POLICY!r}",
        f"mode: Mode = {DEFAULT_MODE!r}",
        "local_pool: str = _default_pool",
        "refresh: bool = False",
    ]
    values = ", ".join(f"{name!r}: {name}" for name in pipeline.params)
    source = (
        f"def run(*, {', '.join(params)}) -> dict:\n"
        f"    return _run(_pipeline, {{{values}}}, policy, mode, local_pool, refresh)\n"
    )
    exec(compile(source, f"<planflow flow of {pipeline.name}>", "exec", dont_inherit=True), namespace)
    run = namespace["run"]
    run.__doc__ = (pipeline.description or f"planflow pipeline {pipeline.name}") + (
        "\n\nArgs:\n"
        + "".join(
            f"    {name}: pipeline parameter ({'required' if default is REQUIRED else f'default {default!r}'})\n"
            for name, default in pipeline.params.items()
        )
        + "    policy: 'plan' (the planner's order) or 'fifo' (first come, first served)\n"
        "    mode: 'inprocess' (tasks of this flow run), 'distributed' (child flow runs on work pools)\n"
        "        or 'dask' (tasks on the Dask cluster, see `planflow dask`)\n"
        "    local_pool: the ResourcePool that in-process components use\n"
        "    refresh: recompute the components cached across runs (cache='inputs') and store anew\n"
    )
    return run


def _start_watchdog(flow: Any, flow_run: Any, state: Any) -> None:
    """The flow run is Running: its server watchdog starts now, not in the flow's body
    (runner.run_pipeline), since between the two Prefect's engine reads the run again
    (setup_run_context), and a server lost then kept the run waiting on its client's
    retries (about a minute) with nothing to bound them."""
    watch_run(str(flow_run.id))


class _QuietWatchdogHook(logging.Filter):
    """Prefect's engine logs each state hook it runs at INFO ("Running hook ... in
    response to entering state 'Running'", "Hook ... finished running successfully"). The
    Running hook that starts the server watchdog is planflow's plumbing, and its two lines
    came on every run's terminal before the run's own; they are dropped (its errors pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or f"'{_start_watchdog.__name__}'" not in record.getMessage()


def _quiet_watchdog_hook() -> None:
    """Install the filter on the engine's logger (once per process)."""
    engine = logging.getLogger("prefect.engine")
    if not any(isinstance(f, _QuietWatchdogHook) for f in engine.filters):
        engine.addFilter(_QuietWatchdogHook())


def _stop_watchdog(flow: Any, flow_run: Any, state: Any) -> None:
    """The flow run is final: its server watchdog (started by `_start_watchdog`) stops."""
    unwatch_run(str(flow_run.id))


class PipelineFlow(Flow):
    """A pipeline's Prefect flow: a call creates its run with the pipeline's tags
    (tags.created_with_tags), not tagged by a request at its start, and starts the run's
    reads while Prefect creates the run (early_reads.py). `with_options` gives a plain
    Flow, whose runs are tagged and read at their start, as a deployment's are."""

    pipeline: Pipeline

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        missing = [name for name, default in self.pipeline.params.items() if default is REQUIRED and name not in kwargs]
        if missing and not args:  # before a run exists; Prefect said "binding parameters for function 'run'"
            names = ", ".join(f"'{name}'" for name in missing)
            example = ", ".join(f"{name}=..." for name in missing)
            raise PipelineError(
                f"pipeline '{self.pipeline.name}' needs {names} (declared REQUIRED: no default), which this call "
                f"does not give. Fix: give it, e.g. {self.name.replace('-', '_')}({example})"
            )
        policy = kwargs.get("policy", DEFAULT_POLICY)
        pool = known_main_pool(kwargs.get("mode", DEFAULT_MODE), kwargs.get("local_pool", DEFAULT_POOL))
        with tags.created_with_tags(self.pipeline.name), early_reads(self.pipeline, policy, pool):
            return super().__call__(*args, **kwargs)


def to_flow(pipeline: Pipeline, **flow_options: Any):
    """The Prefect flow of `pipeline`, named after it (options override the defaults)."""
    workers = max(4, min(64, len(pipeline.steps)))
    settings: dict[str, Any] = dict(
        name=pipeline.name,
        description=pipeline.description or f"planflow pipeline {pipeline.name}",
        task_runner=InterruptibleThreadPoolTaskRunner(max_workers=workers),
        retries=pipeline.retries,
        retry_delay_seconds=2,
        persist_result=True,
        result_serializer=result_serializer(),  # frames as Parquet, the rest compressed (its tasks inherit it)
        log_prints=True,
    )
    # Running: the run's server watchdog starts (a server lost from now on fails the run
    # within PLANFLOW_SERVER_LOST_SECONDS); each final state: it stops (the run is final: a server lost now
    # fails nothing), then its last reporting (run_end.py); a list of its own per option,
    # so that a hook added to one (`@flow.on_completion`) is not added to the others
    final = {
        kind: [_stop_watchdog, finish_reporting]
        for kind in ("on_completion", "on_failure", "on_cancellation", "on_crashed")
    }
    settings.update(final, on_running=[_start_watchdog])
    _quiet_watchdog_hook()
    settings.update(flow_options)
    run = PipelineFlow(fn=_typed_function(pipeline), **settings)
    run.pipeline = pipeline
    return run
