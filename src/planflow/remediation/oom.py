"""`planflow demo heal --scenario oom`: a component killed for memory comes back with more.

`hungry` (oom_demo.py) declares 0.25 GiB on the Docker pool and needs about twice that.
The scenario shows the plan before (memory "declared"), runs the pipeline in distributed
mode on a real Docker worker, and shows what happened: the kernel's OOM kill of the
first container (State.OOMKilled, exit 137), the run again with mem_limit x
PlannerSettings.oom_memory_factor, its completion with the peak it measured, and the
next plan, which uses the learned figure (memory "learned n=K"). The escalation itself
is the distributed executor's (runtime/oom.py): it needs no alert to act, and it is
bounded by oom_max_retries, oom_max_mem_gib and the largest pool that may run it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.sorting import ArtifactSort
from prefect.utilities.callables import parameter_schema

from planflow.core.component import Component
from planflow.ops.workers import start_worker, stop_process
from planflow.prefect.blocks import ResourcePool
from planflow.prefect.jobvars import DEFAULT_IMAGE
from planflow.prefect.limits import sync_limits
from planflow.prefect.workpools import WorkPoolError, apply_work_pools, require_image
from planflow.remediation import oom_demo
from planflow.remediation.heal_watch import HealError, wait_for
from planflow.remediation.oom_retry import ACTION
from planflow.remediation.pools import live_workers
from planflow.runtime.component_flow import run_component
from planflow.runtime.history import history_key
from planflow.runtime.planning import make_plan
from planflow.settings import StatePaths

Say = Callable[[str], None]
WORK_POOL = "docker"
POOL_MEM_GIB = 1.0  # the demo's Docker pool: room for the run again at 0.5 GiB
# What `hungry` holds beyond planflow's own flow-run processes (about 190 MiB in the
# container): a cgroup peak of about 0.38 GiB against 0.25 declared, under 0.5.
EXTRA_MIB = 200


def deploy_component_flow(image: str = DEFAULT_IMAGE) -> None:
    """`run-component/docker` on the Docker pool, its results shared with this machine."""
    results = StatePaths.discover().results
    results.mkdir(parents=True, exist_ok=True)
    from_schema = parameter_schema(run_component.fn).model_dump_for_openapi()
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(run_component.name)
        client.create_deployment(
            flow_id=flow_id,
            name=WORK_POOL,
            entrypoint="planflow.runtime.component_flow:run_component",
            work_pool_name=WORK_POOL,
            tags=["planflow", "docker", "component"],
            enforce_parameter_schema=False,
            parameter_openapi_schema=from_schema,
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/planflow"}}],
            job_variables={
                "image": image,
                "image_pull_policy": "IfNotPresent",
                "volumes": [f"{results}:{results}"],
                "env": {"PREFECT_LOCAL_STORAGE_PATH": str(results)},
            },
        )


def forget_history(component: Component = oom_demo.hungry) -> int:
    """Set the demo component's history aside (its artifacts deleted), so that every demo
    starts from the declaration and shows the kill; returns how many records went."""
    key = history_key(component.name, component.code_version)
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
        for artifact in found:
            client.delete_artifact(artifact.id)
    return len(found)


def _audits(since: float) -> list[str]:
    """The oom-retry remediation's audit artifacts since `since`, oldest first."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"remediation-{ACTION}"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=20,
        )
    return [a.description or "" for a in reversed(found) if a.created and a.created.timestamp() >= since - 1]


def _plan_line(label: str) -> str:
    planned = make_plan(oom_demo.pipeline, mode="distributed")
    figure = planned.memory["hungry"]
    return f"{label}: hungry planned with {figure.gib:.3g} GiB ({figure.source})"


def _containers(since: float) -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"{oom_demo.pipeline.name}.hungry"]))
        )
    ids: list[str] = []
    for run in sorted(runs, key=lambda r: r.created):
        if run.created.timestamp() >= since - 1:
            found = subprocess.run(
                ["docker", "ps", "-aq", "--filter", f"label=io.prefect.flow-run-id={run.id}"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            ids += found.stdout.split()
    return ids


def _describe(container: str) -> str:
    fmt = "{{.State.OOMKilled}} {{.State.ExitCode}} {{.HostConfig.Memory}}"
    out = subprocess.run(["docker", "inspect", "-f", fmt, container], capture_output=True, text=True, timeout=30)
    oom, code, memory = (out.stdout.split() + ["?", "?", "0"])[:3]
    verdict = "killed for memory (State.OOMKilled)" if oom == "true" else "completed"
    return f"container {container[:12]}: mem_limit {int(memory) // 2**20} MiB, exit {code}, {verdict}"


def _serving(worker_name: str) -> bool:
    """The named worker of the demo's pool sent a heartbeat and is not offline."""
    with get_client(sync_client=True) as client:
        return worker_name in live_workers(client, WORK_POOL)


def oom_scenario(logs: Path, say: Say = print, timeout: float = 300.0) -> dict[str, Any]:
    """Run the oom story on the Docker pool; returns what was seen (for the tests)."""
    try:
        require_image(DEFAULT_IMAGE)
    except WorkPoolError as exc:
        raise HealError(f"the oom scenario needs the Docker pool's image: {exc}") from exc
    apply_work_pools([WORK_POOL], resource_pools=False)
    deploy_component_flow()
    try:
        previous: ResourcePool | None = ResourcePool.load(WORK_POOL)
    except ValueError:
        previous = None
    demo_pool = ResourcePool(work_pool=WORK_POOL, cpu=2, mem_gib=POOL_MEM_GIB)
    demo_pool.save(WORK_POOL, overwrite=True)
    sync_limits({WORK_POOL: demo_pool.capacity()})
    logs.mkdir(parents=True, exist_ok=True)
    # Prefect's default heartbeat (30 s): the plan counts a worker as serving for 3
    # intervals, and a 2 s one (6 s) was missed on a loaded machine: "no worker running".
    name = f"{WORK_POOL}-oom-demo-{os.getpid()}"
    worker = start_worker(WORK_POOL, logs / "docker-oom.log", pool_type="docker", name=name)
    started, containers = time.time(), []
    try:
        # its own worker, by name: a worker stopped just before still looks online for a
        # moment, and the plan, made after it is marked offline, found no worker (CI)
        wait_for(lambda: _serving(name), min(60.0, timeout), f"the demo's worker {name} on {WORK_POOL}")
        if forget_history():
            say("history of hungry from earlier demos set aside: the plan starts from its declaration")
        before = _plan_line("plan before")
        say(before)
        say(f"running {oom_demo.pipeline.name}: hungry declares 0.25 GiB and holds {EXTRA_MIB} MiB more than planflow")
        result = oom_demo.oom_demo(extra_mib=EXTRA_MIB, mode="distributed")
        containers = _containers(started)
        for container in containers:
            say("  " + _describe(container))
        audits = _audits(started)
        for line in audits:
            say(f"  audit (remediation {ACTION}, guarded by AlertRoute component-oom-killed): {line}")
        step = result["steps"]["hungry"]
        say(
            f"hungry {step['state']} after {step.get('oom_kills', 0)} OOM kill(s), at {step.get('mem_limit_gib')} GiB; "
            f"peak measured {step.get('peak_mem_gib', 0):.3f} GiB (declared {step.get('declared_mem_gib')})"
        )
        after = _plan_line("plan after")
        say(after)
        return {
            "scenario": "oom",
            "work_pool": WORK_POOL,
            "timeline": [("completed", round(time.time() - started, 1))],
            "step": step,
            "plan_before": before,
            "plan_after": after,
            "containers": [_describe(c) for c in containers],
            "audits": audits,
        }
    finally:
        stop_process(worker)
        if previous is None:
            ResourcePool.delete(WORK_POOL)
        else:
            previous.save(WORK_POOL, overwrite=True)
            sync_limits({WORK_POOL: previous.capacity()})
        for container in containers:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=30)
