"""Distributed mode: each component runs as a flow run of its own deployment.

The parent flow run starts `run-component/<work pool>` for each step on its
planned pool, with job variables from the plan (cpu, memory, GPU), and waits;
children appear as subflow runs of the parent in the Prefect UI. Outputs pass
through result storage by key (see component_flow.py). A failed child fails
the parent with the child's own message. DistributedExecutor is the dispatcher's
executor for this mode (see executors.py).
"""

from __future__ import annotations

import contextvars
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.results import ResultStore
from prefect.states import Cancelled
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from planflow.core.pipeline import Pipeline
from planflow.prefect.blocks.registry import load_settings
from planflow.prefect.jobvars import job_variables, require_fits
from planflow.prefect.reserved import COMPONENT_FLOW
from planflow.prefect.workpools import PAUSED, WorkPoolError, require_pool, worker_status
from planflow.runtime.component_flow import output_key, usage_key
from planflow.runtime.dispatch import Assignment, StepRecord
from planflow.runtime.executors import Executor, StepFuture
from planflow.runtime.memory import CGROUP_ENV
from planflow.runtime.memory_watch import LIMIT_ENV
from planflow.runtime.oom import OomKill, emit_oom_killed, emit_oom_retry, escalate, logger
from planflow.runtime.oom_gate import OomRetry
from planflow.runtime.oom_next import admit, kill_of, mark_oom_killed, more_slots
from planflow.settings import settings

COMPONENT_ENTRYPOINT = "planflow.runtime.component_flow:run_component"  # what a project's prefect.yaml deploys
# Passed to every child so that it finds the same pipelines and result storage.
SHARED_ENV = ("PREFECT_LOCAL_STORAGE_PATH", "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK", "PLANFLOW_PIPELINES")


class ChildRunError(RuntimeError):
    """A component's flow run did not complete; the message carries the child's own."""

    def __init__(self, message: str, flow_run: FlowRun | None = None) -> None:
        super().__init__(message)
        self.flow_run = flow_run


class DeploymentMissingError(LookupError):
    """A pool has no component deployment or no live worker."""


def deployment_name(work_pool: str) -> str:
    return f"{COMPONENT_FLOW}/{work_pool}"


def readiness(work_pools: set[str]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """For each work pool: its API object when it exists, has the component deployment
    and a live worker; otherwise what is missing, each with what to run."""
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
                    f"no deployment '{deployment_name(work_pool)}'. Fix: add to your prefect.yaml a "
                    f"deployment named '{work_pool}' with entrypoint {COMPONENT_ENTRYPOINT} and "
                    f"work_pool {{name: {work_pool}}}, then `prefect --no-prompt deploy --all` "
                    "(in planflow's own repository: `make deploy`)"
                )
        status = worker_status(work_pool)
        if "worker(s) online" not in status or PAUSED in status:  # a paused pool runs nothing either
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
    return settings().pickup_timeout_seconds


def child_timeout() -> float:
    """Seconds a child may take in all, once started, before the run cancels it
    (PLANFLOW_CHILD_TIMEOUT_SECONDS, default 6 hours)."""
    return settings().child_timeout_seconds


POLL_SECONDS = 0.5


def _child(
    deployment: str, parameters: dict[str, Any], job_variables: dict[str, Any], name: str, work_pool: str
) -> str:
    flow_run = run_deployment(
        name=deployment,
        parameters=parameters,
        job_variables=job_variables,
        flow_run_name=name,
        timeout=0,
        as_subflow=True,
    )
    with get_client(sync_client=True) as client:
        flow_run = _wait_for_child(client, flow_run, deployment, work_pool)
    state = flow_run.state
    if state is None or not state.is_completed():
        raise ChildRunError(
            f"flow run '{flow_run.name}' of {deployment} ended {state.name if state else 'without a state'}: "
            f"{(state.message if state else None) or 'no message'}",
            flow_run,
        )
    return output_key(parameters["run_key"], parameters["step"])


def _wait_for_child(client: Any, flow_run: FlowRun, deployment: str, work_pool: str) -> FlowRun:
    """Poll the child until it reaches a final state. Two bounds: no worker picks it up
    (it stays Scheduled, again after a retry or failover) within pickup_timeout(), or it
    takes longer than child_timeout() in all; either way it is cancelled, and the error
    says what to do."""
    pickup, total = pickup_timeout(), child_timeout()
    scheduled_since = time.monotonic()

    def poll() -> FlowRun:
        nonlocal scheduled_since
        current = client.read_flow_run(flow_run.id)
        state = current.state
        if state is not None and state.type != StateType.SCHEDULED:
            scheduled_since = time.monotonic()  # a worker has it: the pickup clock restarts
        elif time.monotonic() - scheduled_since > pickup:
            _cancel(client, current, "no worker picked it up")
            raise ChildRunError(
                f"no worker picked up flow run '{current.name}' of {deployment} within "
                f"{pickup:.0f} s; it was cancelled. Fix: planflow worker start {work_pool}"
            )
        return current

    until_final = Retrying(
        retry=retry_if_result(lambda current: current.state is None or not current.state.is_final()),
        wait=wait_fixed(POLL_SECONDS),
        stop=stop_after_delay(total),
    )
    try:
        return until_final(poll)
    except RetryError:
        _cancel(client, flow_run, f"did not finish within {total:.0f} s")
        raise ChildRunError(
            f"flow run '{flow_run.name}' of {deployment} did not finish within {total:.0f} s; it was "
            "cancelled. Fix: look at the run in the Prefect UI, or raise PLANFLOW_CHILD_TIMEOUT_SECONDS"
        ) from None


def _usage(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """What the child measured of itself (component_flow.py), or nothing when it did not."""
    try:
        usage = ResultStore().read(usage_key(parameters["run_key"], parameters["step"])).result
    except Exception:  # noqa: BLE001 - an older image measures nothing: the run is still fine
        return {}
    return {k: usage[k] for k in ("peak_mem_gib", "peak_mem_how") if isinstance(usage, dict) and k in usage}


def _cancel(client: Any, flow_run: FlowRun, why: str) -> None:
    client.set_flow_run_state(flow_run.id, Cancelled(message=why), force=True)


class DistributedExecutor(Executor):
    """Each step runs as a child flow run of `run-component/<work pool>` on its planned
    pool's work pool, with job variables from its demand; outputs stay in result storage
    (the records hold their keys) and are read back once the dispatch is over.

    Entering checks, before any child starts, that every work pool in the plan is ready
    and that every step's job variables fit its pool's base job template."""

    def __init__(
        self,
        pipeline: Pipeline,
        pools: Mapping[str, Any],
        assignments: Mapping[str, Assignment],
        params: Mapping[str, Any],
        run_key: str,
    ) -> None:
        self.pipeline, self.pools, self.assignments = pipeline, pools, assignments
        self.params, self.run_key = dict(params), run_key
        self.work_pools = {name: pool.work_pool for name, pool in pools.items()}
        self.env = {k: os.environ[k] for k in SHARED_ENV if os.environ.get(k)}
        self._found: dict[str, Any] = {}
        self._threads: ThreadPoolExecutor | None = None
        self.measured: dict[str, dict[str, Any]] = {}  # step -> peak memory, OOM kills, limit

    def job_variables(self, a: Assignment, pool: str | None = None, mem_gib: float | None = None) -> dict[str, Any]:
        """`a`'s job variables on its pool, or on `pool` with `mem_gib` (a run again after
        a kill for memory)."""
        d, pool = a.demand, pool or a.pool
        return job_variables(
            self._found[self.work_pools[pool]].type,
            cpu=d.get("cpu", 1.0),
            gpu=int(d.get("gpu", 0)),
            mem_gib=mem_gib or d.get("mem_gib", 1.0),
            gpu_pool=self.pools[pool].gpu > 0,
        )

    def __enter__(self) -> DistributedExecutor:
        self._found = check_ready({self.work_pools[a.pool] for a in self.assignments.values()})
        for a in self.assignments.values():  # a plan asking more than a pool's template allows fails now
            work_pool = self.work_pools[a.pool]
            template = self._found[work_pool].base_job_template
            require_fits(self.job_variables(a), template, component=a.step, pool=work_pool)
        self._threads = ThreadPoolExecutor(
            max_workers=max(2, len(self.assignments)), thread_name_prefix="planflow-child"
        )
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True)

    def start(self, step: str, outputs: dict[str, Any]) -> StepFuture:
        assert self._threads is not None, "use DistributedExecutor as a context manager"
        a = self.assignments[step]
        bindings = self.pipeline.bindings[step].values()
        parameters = {
            "pipeline": self.pipeline.ref,
            "step": step,
            "params": self.params,
            "inputs": {b.source: outputs[b.source] for b in bindings if b.kind == "step"},
            "run_key": self.run_key,
        }
        context = contextvars.copy_context()  # keeps the parent flow run: children link to it
        return self._threads.submit(context.run, self._run_step, a, parameters)

    def _run_step(self, a: Assignment, parameters: dict[str, Any]) -> str:
        """Run one step as a child flow run; a child killed for memory runs again with
        more (oom.escalate: factor, cap, a bigger pool), at most oom_max_retries times."""
        pool, mem_gib, retry, kills = a.pool, float(a.demand.get("mem_gib", 1.0)), 0, 0
        name = f"{self.pipeline.name}.{a.step}"
        while True:
            work_pool = self.work_pools[pool]
            variables = self.job_variables(a, pool, mem_gib)
            variables["env"] = {**self.env, **variables.get("env", {})}
            if self._found[work_pool].type in ("docker", "kubernetes"):
                variables["env"][CGROUP_ENV] = "1"  # its container's cgroup is its own: measure that
            else:  # a process shares the machine: its own watchdog holds it to the limit (memory_watch.py)
                variables["env"][LIMIT_ENV] = str(int(mem_gib * 2**30))
            began = time.monotonic()
            try:
                with more_slots(a, pool, mem_gib, ledger=self.ledger):  # a run again's larger memory, held first
                    key = _child(deployment_name(work_pool), parameters, variables, name, work_pool)
            except ChildRunError as exc:
                kill = kill_of(str(exc.flow_run.id), self._found[work_pool].type) if exc.flow_run else None
                if kill is None:
                    raise
                kills += 1
                self.measured[a.step] = {"oom_kills": kills}
                emit_oom_killed(self.pipeline.name, a.step, pool, kill, mem_gib)
                pool, mem_gib, retry = self._escalate(a, kill, pool, mem_gib, retry, str(exc.flow_run.id))
                mark_oom_killed(exc.flow_run)  # run again with more: not its pool's failure (a last kill is)
                continue
            self.measured[a.step] = {**_usage(parameters), "oom_kills": kills, "mem_limit_gib": mem_gib, "pool": pool}
            if kills:  # what the history learns: the run that completed, not the killed ones before it
                self.measured[a.step]["ran_seconds"] = time.monotonic() - began
            return key

    def _escalate(
        self, a: Assignment, kill: OomKill, pool: str, mem_gib: float, retry: int, killed_run: str
    ) -> tuple[str, float, int]:
        spec, settings = self.pipeline.steps[a.step].spec, load_settings()
        pools_mem = {p: float(block.mem_gib) for p, block in self.pools.items() if spec.allows(p)}
        nxt = escalate(
            a.step,
            kill,
            kill.limit_gib or mem_gib,
            pool,
            retry,
            pools_mem,
            factor=settings.oom_memory_factor,
            cap_gib=settings.oom_max_mem_gib,
            max_retries=settings.oom_max_retries,
        )
        if nxt.moved:  # its own pool cannot hold the new limit: a bigger one must be ready
            self._found.update(check_ready({self.work_pools[nxt.pool]}))
        work_pool = self.work_pools[nxt.pool]
        require_fits(
            self.job_variables(a, nxt.pool, nxt.mem_gib),
            self._found[work_pool].base_job_template,
            component=a.step,
            pool=work_pool,
        )
        parent = FlowRunContext.get()
        admit(  # guarded and audited as the remediation oom-retry (oom_gate.py)
            OomRetry(
                self.pipeline.name,
                a.step,
                pool,
                nxt.pool,
                mem_gib,
                nxt.mem_gib,
                nxt.retry,
                kill.where,
                killed_run,
                str(parent.flow_run.id) if parent and parent.flow_run else "",
            )
        )
        logger().warning(
            "component '%s' was killed for memory (%s) at %.3g GiB on pool '%s': running it again with %.3g GiB "
            "on pool '%s' (run again %d of at most %d)",
            a.step,
            kill.where,
            mem_gib,
            pool,
            nxt.mem_gib,
            nxt.pool,
            nxt.retry,
            settings.oom_max_retries,
        )
        emit_oom_retry(self.pipeline.name, a.step, pool, nxt.pool, mem_gib, nxt.mem_gib, nxt.retry)
        return nxt.pool, nxt.mem_gib, nxt.retry

    def measure(self, record: StepRecord) -> None:
        """Put what the step's child measured on its record, before the reporters hear it."""
        for name, value in self.measured.get(record.step, {}).items():
            setattr(record, name, value)

    def collect(self, records: Mapping[str, StepRecord]) -> None:
        store = ResultStore()
        for record in records.values():  # outputs stay in storage; read them back for key metrics
            if record.state == "Completed" and isinstance(record.result, str):
                record.result = store.read(record.result).result
