"""Where a rescaled pool's extra workers come from, and how they go.

- Process and Docker pools: `prefect worker start` processes on this machine (for a
  Docker pool the worker is a process that starts containers), detached, recorded by
  pid and name. One is stopped only once idle: a worker's flow runs are its child
  processes, stopping it would crash them.
- Kubernetes pools: the replicas of the worker Deployment (kube.py); one record holding
  the replicas before, restored on the way back (flow-run Jobs are not affected).

A record (a dict) is what `scale_out` returns and the guard's ledger keeps, so that the
scale-down, possibly in another process, knows what to undo.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Literal

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from planflow.ops.workers import busy, is_our_process, stop_group
from planflow.ops.workers import start_worker as start_worker_process
from planflow.prefect.blocks.alert_route import AlertRoute
from planflow.remediation.kube import scale_workers, worker_replicas
from planflow.settings import StatePaths, client_env

WORKER_PREFIX = "planflow-rescale-"
BUSY_GRACE_SECONDS = 15.0


def workers_dir() -> Path:
    """Where the started workers log: <state folder>/remediation/."""
    folder = StatePaths.discover().home / "remediation"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def start_worker(work_pool: str, pool_type: str, name: str) -> int:
    """Start `prefect worker start` for the pool as a detached process; returns its pid."""
    env = dict(os.environ)
    try:
        env.update(client_env(StatePaths.discover()))
    except Exception:  # noqa: BLE001 - no state folder: the environment as it is
        pass
    if os.environ.get("PREFECT_API_URL"):
        env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]
    return start_worker_process(
        work_pool,
        workers_dir() / f"{name}.log",
        pool_type=pool_type,
        name=name,
        env=env,
        query_seconds=float(env.get("PREFECT_WORKER_QUERY_SECONDS", 2)),
    ).pid


def stop_worker(pid: int, name: str) -> bool:
    """Stop a worker this module started (checked by its command line); True if stopped."""
    if not is_our_process(pid, name):
        return False  # gone, or the pid was recycled by another program
    return stop_group(pid, 15)


def current_replicas(route: AlertRoute) -> int:
    """The worker Deployment's replicas (a Kubernetes pool's workers)."""
    return worker_replicas(route.kubernetes_namespace, route.kubernetes_worker_deployment, route.kubernetes_credentials)


def scale_out(pool: str, pool_type: str, count: int, route: AlertRoute) -> list[dict[str, Any]]:
    """Add `count` workers to `pool`; returns their records (what scale-down needs)."""
    if pool_type == "kubernetes":
        namespace, name = route.kubernetes_namespace, route.kubernetes_worker_deployment
        before = current_replicas(route)
        after = scale_workers(namespace, name, min(before + count, route.max_workers), route.kubernetes_credentials)
        return [
            {
                "kind": "kubernetes",
                "name": f"{namespace}/{name}",
                "namespace": namespace,
                "deployment": name,
                "credentials": route.kubernetes_credentials,
                "replicas_before": before,
                "replicas": after,
            }
        ]
    workers = []
    for _ in range(count):
        name = f"{WORKER_PREFIX}{pool}-{uuid.uuid4().hex[:6]}"
        workers.append({"kind": "process", "pid": start_worker(pool, pool_type, name), "name": name})
    return workers


def busy_for_a_while(pid: int, grace: float = BUSY_GRACE_SECONDS) -> bool:
    """Still running a flow run after `grace` seconds (a run that just ended leaves its
    supervisor process behind for a few seconds while it reports and cleans up)."""
    still_busy = Retrying(
        stop=stop_after_delay(grace),
        wait=wait_fixed(0.5),
        retry=retry_if_result(bool),
        retry_error_callback=lambda state: True,
    )
    return still_busy(busy, pid)


def scale_in(worker: dict[str, Any]) -> tuple[Literal["stopped", "busy", "gone"], str]:
    """Undo one record of `scale_out`: ("stopped" | "busy" | "gone", what happened)."""
    if worker.get("kind") == "kubernetes":
        replicas = scale_workers(
            worker["namespace"], worker["deployment"], int(worker["replicas_before"]), worker.get("credentials", "")
        )
        return "stopped", (
            f"worker Deployment {worker['name']} scaled back to {replicas} replica(s) "
            "(running flow-run Jobs are not affected)"
        )
    pid, name = int(worker["pid"]), worker["name"]
    if not is_our_process(pid, name):
        return "gone", f"worker {name} (pid {pid}) had already stopped"
    if busy_for_a_while(pid):
        return "busy", f"worker {name} (pid {pid}) still runs a flow run"
    if stop_worker(pid, name):
        return "stopped", f"stopped idle worker {name} (pid {pid})"
    return "gone", f"worker {name} (pid {pid}) had already stopped"
