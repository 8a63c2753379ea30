"""A component killed for memory: told apart from other failures, and what to do next.

Told apart (named as such, never guessed from an exit code alone):
- Docker: the container's `State.OOMKilled` (`docker inspect`), found by the label
  `io.prefect.flow-run-id` that Prefect's Docker worker puts on it. In Prefect 3 the
  flow runs in a child process of `prefect flow-run execute`: the kernel kills that child
  (the run ends Crashed, "status code -9"), the container may exit 0, and Docker still
  records OOMKilled. A SIGKILL alone (exit 137, -9) is not taken for an OOM kill;
- Kubernetes: a container status whose `terminated.reason` is `OOMKilled` (the pod's
  `status.containerStatuses`, as the API and a worker that reads the pod report it).

What next (`escalate`): the same component again with its memory limit times
`oom_memory_factor`, at most `oom_max_mem_gib` and never above the largest pool that may
run it (both in the PlannerSettings block); on a bigger pool when its own cannot hold
the new limit; at most `oom_max_retries` times per run. At the cap it fails with
OomCapError naming the peak seen, the limit and the fix: no retry loop.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefect.events import emit_event

from planflow.prefect.jobvars import quantity
from planflow.prefect.run_logger import run_logger

GIB = 2**30
DOCKER_TIMEOUT_S = 30.0
# How long the container of a crashed flow run may take to exit (its `prefect flow-run
# execute` reports the crash, then shuts down; on a loaded 2-core machine that took > 30 s).
EXIT_WAIT_S = 180.0
FLOW_RUN_LABEL = "io.prefect.flow-run-id"  # set by prefect-docker on every flow-run container
OOM_REASON = "OOMKilled"


class OomCapError(RuntimeError):
    """A component killed for memory at the largest limit it may have."""


@dataclass(frozen=True)
class OomKill:
    """A kill for memory, as the infrastructure reported it."""

    where: str  # "docker container 3f2a1b (State.OOMKilled, exit 137)"
    limit_gib: float | None  # the limit it was killed at, when the report says
    exit_code: int | None = None
    peak_gib: float | None = None  # its peak when it was killed, where measured (planflow's watchdog)


@dataclass(frozen=True)
class Escalation:
    """The next run of a component killed for memory."""

    mem_gib: float
    pool: str
    retry: int  # 1 for the first run again
    moved: bool  # to another pool, because its own cannot hold mem_gib


# -- telling an OOM kill apart ----------------------------------------------------------
def oom_from_docker_inspect(container: Mapping[str, Any]) -> OomKill | None:
    """An OomKill from one `docker inspect` object when its State says OOMKilled."""
    state = container.get("State") or {}
    if not state.get("OOMKilled"):
        return None
    memory = (container.get("HostConfig") or {}).get("Memory") or 0
    exit_code = state.get("ExitCode")
    # OOMKilled also says a process inside was killed (a step's own process) while the
    # container's main process exited on its own: "exit 0" read as a contradiction
    how = (
        f"exit {exit_code}"
        if exit_code == 137
        else f"a process in it was killed for memory; the container's main process exited {exit_code}"
    )
    return OomKill(
        where=f"docker container {str(container.get('Id', '?'))[:12]} (State.OOMKilled, {how})",
        limit_gib=memory / GIB if memory else None,
        exit_code=exit_code,
    )


def oom_from_pod(pod: Mapping[str, Any]) -> OomKill | None:
    """An OomKill from a Kubernetes Pod object (`kubectl get pod -o json`, or what the
    worker read) when a container terminated with reason OOMKilled (now or last time)."""
    status = pod.get("status") or {}
    limits = {
        c.get("name"): ((c.get("resources") or {}).get("limits") or {}).get("memory")
        for c in (pod.get("spec") or {}).get("containers") or []
    }
    for item in status.get("containerStatuses") or []:
        for which in ("state", "lastState"):
            terminated = (item.get(which) or {}).get("terminated") or {}
            if terminated.get("reason") == OOM_REASON:
                limit = limits.get(item.get("name"))
                name = (pod.get("metadata") or {}).get("name", "?")
                return OomKill(
                    where=f"kubernetes pod {name} container {item.get('name')} (reason OOMKilled, "
                    f"exit {terminated.get('exitCode')})",
                    limit_gib=quantity(limit) / GIB if limit else None,
                    exit_code=terminated.get("exitCode"),
                )
    return None


def docker_containers(flow_run_id: str) -> list[dict[str, Any]]:
    """`docker inspect` of the containers of one flow run (empty without a Docker client)."""
    if not shutil.which("docker"):
        return []
    found = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={FLOW_RUN_LABEL}={flow_run_id}"],
        capture_output=True,
        text=True,
        timeout=DOCKER_TIMEOUT_S,
    )
    ids = found.stdout.split()
    if found.returncode != 0 or not ids:
        return []
    # The flow run may be reported Crashed (its flow process killed) before the container
    # exits; Docker sets State.OOMKilled only when it has: wait for that, bounded.
    try:
        subprocess.run(["docker", "wait", *ids], capture_output=True, timeout=EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        pass  # still running: read what there is
    inspect = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, timeout=DOCKER_TIMEOUT_S)
    return json.loads(inspect.stdout) if inspect.returncode == 0 else []


def oom_of_flow_run(flow_run_id: str, pool_type: str) -> OomKill | None:
    """The kill for memory of a flow run's infrastructure, where it can be told (Docker)."""
    if pool_type != "docker":
        return None
    for container in docker_containers(flow_run_id):
        kill = oom_from_docker_inspect(container)
        if kill is not None:
            return kill
    return None


# -- what next --------------------------------------------------------------------------
def escalate(
    component: str,
    kill: OomKill,
    limit_gib: float,
    pool: str,
    retry: int,
    pools_mem: Mapping[str, float],
    *,
    factor: float,
    cap_gib: float,
    max_retries: int,
    peak_gib: float | None = None,
) -> Escalation:
    """The next run of `component`, killed for memory at `limit_gib` on `pool`, or
    OomCapError when it already had the most it may have. `pools_mem` holds the memory
    of every pool that may run it; `retry` counts the runs again so far (0 at the first
    kill); `peak_gib` is the largest peak measured in its history, when any.

        >>> escalate("train", KILL, 0.25, "docker", 0, {"docker": 4.0}, factor=2, cap_gib=64, max_retries=3)
        Escalation(mem_gib=0.5, pool='docker', retry=1, moved=False)
    """
    largest = max(pools_mem.values(), default=0.0)
    ceiling = min(cap_gib, largest)
    wanted = min(limit_gib * factor, ceiling)
    if retry >= max_retries or wanted <= limit_gib + 1e-9:
        raise _cap_error(component, kill, limit_gib, retry, pools_mem, factor, cap_gib, max_retries, peak_gib)
    if pools_mem.get(pool, 0.0) + 1e-9 >= wanted:
        return Escalation(mem_gib=wanted, pool=pool, retry=retry + 1, moved=False)
    bigger = sorted((m, p) for p, m in pools_mem.items() if m + 1e-9 >= wanted)
    return Escalation(mem_gib=wanted, pool=bigger[0][1], retry=retry + 1, moved=True)


OOM_HEADROOM = 1.2  # what a fix asks for: the peak seen and a fifth more (the planner learns peaks so too)


def _cap_error(
    component: str,
    kill: OomKill,
    limit_gib: float,
    retry: int,
    pools_mem: Mapping[str, float],
    factor: float,
    cap_gib: float,
    max_retries: int,
    peak_gib: float | None,
) -> OomCapError:
    """Why `component` gets no more memory, the largest peak seen (at this kill or in its
    history), and the fix for the bound it hit: the memory it needs is the peak and a
    fifth more, or at least the next step (`factor`) when no peak is known."""
    peaks = [p for p in (kill.peak_gib, peak_gib) if p]
    peak = max(peaks, default=None)
    need = max(limit_gib * factor, peak * OOM_HEADROOM) if peak else limit_gib * factor
    if peak and kill.peak_gib and peak == kill.peak_gib:
        seen = f"{peak:.3g} GiB when it was killed"
    elif peak:
        seen = f"{peak:.3g} GiB measured before"
    else:
        seen = f"at least {limit_gib:.3g} GiB (its limit)"
    largest = max(pools_mem.values(), default=0.0)
    biggest = max(pools_mem, key=lambda p: pools_mem[p], default="-")
    declare = f"declare mem_gib >= {need:.3g} for it (its runs then start there)"
    if largest + 1e-9 < need:  # no pool that may run it holds that
        declare += f" and add a ResourcePool with mem_gib >= {need:.3g} that may run it"
    fixes = ["make it use less memory", declare]
    if retry >= max_retries:
        why = f"it already had {retry} run(s) again with more memory (PlannerSettings.oom_max_retries={max_retries})"
        fixes.append("raise PlannerSettings.oom_max_retries (`planflow blocks`)")
    else:
        why = (
            f"the cap is {min(cap_gib, largest):.3g} GiB (PlannerSettings.oom_max_mem_gib={cap_gib:g}; the largest "
            f"pool that may run it, '{biggest}', has {largest:g} GiB)"
        )
    if cap_gib + 1e-9 < need <= largest + 1e-9:
        fixes.append(f"raise PlannerSettings.oom_max_mem_gib to >= {need:.3g} (`planflow blocks`)")
    return OomCapError(
        f"component '{component}' was killed for memory ({kill.where}) at its limit of {limit_gib:.3g} GiB; "
        f"peak seen: {seen}; {why}. Fix: {', or '.join(fixes)}"
    )


# -- telling others -----------------------------------------------------------------------
def logger() -> logging.Logger | logging.LoggerAdapter:
    return run_logger("planflow.oom")


def _resource(pipeline: str, step: str) -> dict[str, str]:
    return {"prefect.resource.id": f"planflow.component.{pipeline}.{step}", "prefect.resource.name": step}


def emit_oom_killed(pipeline: str, step: str, pool: str, kill: OomKill, limit_gib: float) -> None:
    """Event `planflow.component.oom-killed`: what was killed, where, at which limit."""
    emit_event(
        event="planflow.component.oom-killed",
        resource=_resource(pipeline, step),
        payload={
            "pipeline": pipeline,
            "component": step,
            "pool": pool,
            "where": kill.where,
            "limit_gib": limit_gib,
            "exit_code": kill.exit_code,
        },
    )


def emit_oom_retry(
    pipeline: str, step: str, pool: str, to_pool: str, was_gib: float, now_gib: float, retry: int
) -> None:
    """Event `planflow.component.oom-retry`: the run again with more memory (and its pool)."""
    emit_event(
        event="planflow.component.oom-retry",
        resource=_resource(pipeline, step),
        payload={
            "pipeline": pipeline,
            "component": step,
            "pool": pool,
            "to_pool": to_pool,
            "was_gib": was_gib,
            "now_gib": now_gib,
            "retry": retry,
        },
    )
