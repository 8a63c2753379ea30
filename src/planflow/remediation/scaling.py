"""Where a rescaled pool's extra workers come from, and how they go.

- Process and Docker pools: `prefect worker start` processes on this machine (for a
  Docker pool the worker is a process that starts containers), detached, recorded by
  pid and name (in the guard's ledger and in <state>/remediation/, where `planflow
  stack down` finds and stops them: `stop_started_workers`). A scale-down stops one
  only once idle: a worker's flow runs are its child processes, stopping it would crash
  them.
- Kubernetes pools: the replicas of the worker Deployment (kube.py); one record holding
  the replicas before, restored on the way back (flow-run Jobs are not affected).

A record (a dict) is what `scale_out` returns and the guard's ledger keeps, so that the
scale-down, possibly in another process, knows what to undo.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any, Literal

from prefect.client.orchestration import get_client
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from planflow.ops.workers import busy, forget_worker, is_our_process, record_worker, stop_group, stop_recorded_workers
from planflow.ops.workers import start_worker as start_worker_process
from planflow.prefect.blocks.alert_route import AlertRoute
from planflow.remediation.guard import all_ledgers
from planflow.remediation.kube import scale_workers, worker_replicas
from planflow.remediation.names import REMEDIATION_POOL
from planflow.settings import StatePaths, client_env

WORKER_PREFIX = "planflow-rescale-"
log = logging.getLogger("planflow.remediation")
BUSY_GRACE_SECONDS = 15.0


def workers_dir(paths: StatePaths | None = None) -> Path:
    """Where the started workers log and are recorded: <state folder>/remediation/."""
    folder = (paths or StatePaths.discover()).home / "remediation"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def start_worker(work_pool: str, pool_type: str, name: str) -> int:
    """Start `prefect worker start` for the pool as a detached process; returns its pid."""
    if work_pool == REMEDIATION_POOL:  # the rescale refuses it first; never a plain worker there
        raise ValueError(
            f"no extra worker for {REMEDIATION_POOL}: it runs the remediations themselves, in the "
            "remediation worker (`planflow stack up`), whose --limit sets how many at once"
        )
    env = dict(os.environ)
    try:
        env.update(client_env(StatePaths.discover()))
    except Exception:  # noqa: BLE001 - no state folder: the environment as it is
        pass
    if os.environ.get("PREFECT_API_URL"):
        env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]
    folder = workers_dir()
    pid = start_worker_process(
        work_pool,
        folder / f"{name}.log",
        pool_type=pool_type,
        name=name,
        env=env,
        query_seconds=float(env.get("PREFECT_WORKER_QUERY_SECONDS", 2)),
    ).pid
    record_worker(folder, name, pid)  # `planflow stack down` stops it, whatever else happens
    return pid


def stop_worker(pid: int, name: str) -> bool:
    """Stop a worker this module started (checked by its command line); True if stopped."""
    if not is_our_process(pid, name):
        _forget(name)
        return False  # gone, or the pid was recycled by another program
    stopped = stop_group(pid, 15, reap=True)
    if stopped:
        _forget(name)
    return stopped


def _forget(name: str) -> None:
    try:
        forget_worker(workers_dir(), name)
    except Exception:  # noqa: BLE001 - no state folder here: nothing was recorded in it
        pass


def stop_started_workers(paths: StatePaths | None = None, ledgers: bool = True) -> list[str]:
    """Stop every worker a rescale started that still runs: those recorded in the state
    folder and, with `ledgers` (the Prefect server answers), those the guard's ledgers
    name (started from another state folder on this machine). One line per worker
    stopped. For `planflow stack down`."""
    folder = workers_dir(paths)
    stopped = [f"{name} (pid {pid})" for name, pid in stop_recorded_workers(folder).items()]
    if not ledgers:
        return stopped
    try:
        found = all_ledgers()
    except Exception as exc:  # noqa: BLE001 - the recorded workers are stopped all the same
        log.warning("the guard's ledgers could not be read (%r): only recorded workers stopped", exc)
        return stopped
    for ledger in found.values():
        for worker in ledger.get("workers", []):
            if worker.get("kind", "process") != "process" or not str(worker.get("name", "")).startswith(WORKER_PREFIX):
                continue
            if stop_worker(int(worker["pid"]), worker["name"]):
                stopped.append(f"{worker['name']} (pid {worker['pid']})")
    return stopped


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
        workers.append({"kind": "process", "pid": start_worker(pool, pool_type, name), "name": name, "work_pool": pool})
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
        forget_on_server(worker.get("work_pool"), name)
        return "gone", f"worker {name} (pid {pid}) had already stopped"
    if busy_for_a_while(pid):
        return "busy", f"worker {name} (pid {pid}) still runs a flow run"
    stopped = stop_worker(pid, name)
    forget_on_server(worker.get("work_pool"), name)
    if stopped:
        return "stopped", f"stopped idle worker {name} (pid {pid})"
    return "gone", f"worker {name} (pid {pid}) had already stopped"


def forget_on_server(work_pool: str | None, name: str) -> None:
    """Delete the server's record of a worker stopped on purpose: an offline worker left
    there is what `PlanflowWorkerHeartbeatStale` reports, and the failover then paused
    the pool the rescale had just scaled back (the backup of another one, meanwhile)."""
    if not work_pool:
        return
    try:
        with get_client(sync_client=True) as client:
            client.request(
                "DELETE",
                "/work_pools/{work_pool_name}/workers/{name}",
                path_params={"work_pool_name": work_pool, "name": name},
            )
    except Exception as exc:  # noqa: BLE001 - the worker is stopped all the same; its record ages out
        log.warning("the record of stopped worker %s on %s could not be deleted: %r", name, work_pool, exc)
