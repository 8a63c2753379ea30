"""Distributed mode: each component runs as a flow run of its own deployment.

The parent flow run starts `run-component/<work pool>` for each step on its
planned pool, with job variables from the plan (cpu, memory, GPU), and waits;
children appear as subflow runs of the parent in the Prefect UI. Outputs pass
through result storage by key (see flows.component_flow). A failed child fails
the parent with the child's own message.
"""

from __future__ import annotations

import contextvars
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from planflow.core.pipeline import Pipeline
from planflow.runtime.component_flow import output_key
from planflow.runtime.dispatch import Assignment

COMPONENT_FLOW = "run-component"
# Passed to every child so that it finds the same pipelines and result storage.
SHARED_ENV = ("PREFECT_LOCAL_STORAGE_PATH", "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK", "PLANFLOW_PIPELINES")


class ChildRunError(RuntimeError):
    """A component's flow run did not complete; the message carries the child's own."""


class DeploymentMissingError(LookupError):
    """A pool has no component deployment or no live worker."""


def deployment_name(work_pool: str) -> str:
    return f"{COMPONENT_FLOW}/{work_pool}"


def readiness(work_pools: set[str]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """For each work pool: its API object when it exists, has the component deployment
    and a live worker; otherwise what is missing, each with what to run."""
    from planflow.prefect.workpools import WorkPoolError, require_pool, worker_status

    ready, problems = {}, {}
    for work_pool in sorted(work_pools):
        missing: list[str] = []
        try:
            pool = require_pool(work_pool)
        except WorkPoolError as exc:
            problems[work_pool] = [str(exc)]
            continue
        with get_client(sync_client=True) as client:
            try:
                client.read_deployment_by_name(deployment_name(work_pool))
            except ObjectNotFound:
                missing.append(
                    f"no deployment '{deployment_name(work_pool)}'. Fix: prefect deploy "
                    "--prefect-file deployments/prefect.yaml --all (or `make deploy`)"
                )
        status = worker_status(work_pool)
        if "worker(s) online" not in status:
            missing.append(status)
        if missing:
            problems[work_pool] = missing
        else:
            ready[work_pool] = pool
    return ready, problems


def check_ready(work_pools: set[str]) -> dict[str, Any]:
    """The work pools' API objects, or DeploymentMissingError listing, for every pool that
    is not ready, what is missing and what to run."""
    ready, problems = readiness(work_pools)
    if problems:
        lines = [p for pool in sorted(problems) for p in problems[pool]]
        raise DeploymentMissingError("distributed mode cannot start:\n" + "\n".join(f"  - {p}" for p in lines))
    return ready


def pickup_timeout() -> float:
    """Seconds a child may wait for a worker before the run gives up on it
    (PLANFLOW_PICKUP_TIMEOUT_SECONDS, default 120)."""
    return float(os.environ.get("PLANFLOW_PICKUP_TIMEOUT_SECONDS", "120"))


def _child(
    deployment: str, parameters: dict[str, Any], job_variables: dict[str, Any], name: str, work_pool: str
) -> str:
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    flow_run = run_deployment(
        name=deployment,
        parameters=parameters,
        job_variables=job_variables,
        flow_run_name=name,
        timeout=0,
        as_subflow=True,
    )
    waited_since = time.monotonic()
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run.id)
            state = flow_run.state
            if state is not None and state.is_final():
                break
            if state is not None and state.type != StateType.SCHEDULED:
                waited_since = time.monotonic()  # a worker has it: no pickup deadline
            elif time.monotonic() - waited_since > pickup_timeout():
                client.set_flow_run_state(flow_run.id, Cancelled(message="no worker picked it up"), force=True)
                raise ChildRunError(
                    f"no worker picked up flow run '{flow_run.name}' of {deployment} within "
                    f"{pickup_timeout():.0f} s; it was cancelled. Fix: prefect worker start --pool {work_pool}"
                )
            time.sleep(0.5)
    if not state.is_completed():
        raise ChildRunError(
            f"flow run '{flow_run.name}' of {deployment} ended {state.name}: {state.message or 'no message'}"
        )
    return output_key(parameters["run_key"], parameters["step"])


def remote_starter(
    pipeline: Pipeline,
    assignments: Mapping[str, Assignment],
    work_pools: Mapping[str, str],
    params: Mapping[str, Any],
    run_key: str,
    job_variables: Callable[[str, Assignment], dict[str, Any]],
    executor: ThreadPoolExecutor,
) -> Callable[[str, dict[str, Any]], Future]:
    """A `start(step, outputs)` for the dispatcher that runs each step as a child flow run.
    `work_pools` maps planflow pool -> Prefect work pool; outputs are storage keys."""
    env = {k: os.environ[k] for k in SHARED_ENV if os.environ.get(k)}

    def start(step: str, outputs: dict[str, Any]) -> Future:
        a = assignments[step]
        work_pool = work_pools[a.pool]
        data_inputs = {b.source: outputs[b.source] for b in pipeline.bindings[step].values() if b.kind == "step"}
        parameters = {
            "pipeline": pipeline.ref,
            "step": step,
            "params": dict(params),
            "inputs": data_inputs,
            "run_key": run_key,
        }
        variables = job_variables(work_pool, a)
        variables["env"] = {**env, **variables.get("env", {})}
        context = contextvars.copy_context()  # keeps the parent flow run: children link to it
        return executor.submit(
            context.run, _child, deployment_name(work_pool), parameters, variables, f"{pipeline.name}.{step}", work_pool
        )

    return start
