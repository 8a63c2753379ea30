"""The flow that runs one component of a pipeline on a work pool (distributed mode).

Its deployments, one per work pool (`run-component/<work pool>`), are started by
the pipeline's parent flow run with job variables from the plan. Inputs and the
output pass through Prefect result storage by key: the default storage is the
local path PREFECT_LOCAL_STORAGE_PATH, shared into containers; on a cluster, point
PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK at a remote storage block (e.g. S3/GCS).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.results import ResultStore

from planflow.core import discovery
from planflow.prefect.reserved import COMPONENT_FLOW
from planflow.prefect.serializer import PlanflowSerializer
from planflow.runtime.isolation import UsageLog, step_function
from planflow.runtime.memory import measure_peak
from planflow.runtime.memory_watch import MemoryWatch, limit_from_env, watch_record
from planflow.runtime.tags import step_task


def output_key(run_key: str, step: str) -> str:
    """Where a step's output lives in result storage for one pipeline run."""
    return f"planflow-{run_key}-{step}"


def usage_key(run_key: str, step: str) -> str:
    """Where a step's measured peak memory lives in result storage (memory.py)."""
    return f"planflow-{run_key}-{step}-usage"


@flow(name=COMPONENT_FLOW, persist_result=True, result_serializer=PlanflowSerializer(), log_prints=True)
def run_component(
    pipeline: str,
    step: str,
    params: dict[str, Any],
    inputs: dict[str, str],
    run_key: str,
) -> str:
    """Run `step` of `pipeline` (its ref: `package.module:attribute` or a YAML file,
    imported from the project folder the worker runs in): read its upstream outputs
    (`inputs`: upstream step -> storage key), compute it as a task, store its output;
    return the output's key."""
    logger = get_run_logger()
    discovery.use_project_imports(Path.cwd())
    p = discovery.load_ref(pipeline)
    store = ResultStore(serializer=PlanflowSerializer())
    outputs = {upstream: store.read(key).result for upstream, key in inputs.items()}
    kwargs = p.step_kwargs(step, p.resolve_params(params), outputs)
    component = p.steps[step].component
    task = step_task(component, step)
    # its native thread pools (BLAS, OpenMP) held to its declared cpu, as in-process
    # (cpulimits.py); this flow run is already a process of its own
    task.fn = step_function(step, component.fn, component.spec.cpu, "thread", UsageLog())
    limit, ctx = limit_from_env(), FlowRunContext.get()
    # a process-pool child is held to its planned mem_limit by a watchdog (memory_watch.py)
    watch = MemoryWatch(limit, watch_record(store, str(ctx.flow_run.id))) if limit and ctx and ctx.flow_run else None
    with watch or nullcontext():
        result = task(**kwargs)
    key = output_key(run_key, step)
    store.write(result, key=key)
    peak = measure_peak()
    store.write({"peak_mem_gib": peak.gib, "peak_mem_how": peak.how}, key=usage_key(run_key, step))
    logger.info("%s/%s peak memory %.3f GiB (%s)", p.name, step, peak.gib, peak.how)
    logger.info("%s/%s stored its output as %s", p.name, step, key)
    return key
