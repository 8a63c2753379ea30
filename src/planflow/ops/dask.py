"""`planflow dask up | down | status`: a local Dask cluster for Dask-mode runs.

A scheduler and worker processes (`python -m distributed.cli.dask_scheduler`,
`... dask_worker`), each in a process group of its own, on 127.0.0.1, with pid files,
logs and the record `cluster.json` under `<state folder>/dask/`. Every worker offers its
pool's resources as Dask worker resources (`<pool>.cpu`, `<pool>.gpu`, `<pool>.mem_gib`,
see runtime/dask_executor.py), sized from the ResourcePool blocks: a pool's capacity is
split evenly over its `workers` worker processes. `up` is idempotent (a recorded cluster
that answers is kept); every wait is bounded and a failure names the log to read.

`up --address tcp://host:8786` starts nothing: it records a scheduler that already runs
(e.g. on dask-kubernetes or dask-jobqueue), checked to answer, as the one runs use.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planflow.ops.processes import (
    free_port,
    log_tail,
    port_in_use,
    read_pid_file,
    same_process,
    spawn,
    stop_group,
    wait_until,
    write_pid_file,
)
from planflow.runtime.dask_cluster import (
    DaskClusterError,
    cluster_file,
    cluster_resources,
    pool_resources,
)
from planflow.settings import DEFAULT_HOST, StatePaths, make_private_dir, private_files, settings, write_private

SCHEDULER_MODULE = "distributed.cli.dask_scheduler"
WORKER_MODULE = "distributed.cli.dask_worker"
START_SECONDS = 60.0  # how long the scheduler, then all workers, may take to answer


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process: its name, pool, threads and the Dask resources it offers."""

    name: str
    pool: str
    nthreads: int
    resources: dict[str, float] = field(default_factory=dict)

    def resources_arg(self) -> str:
        return " ".join(f"{name}={value:g}" for name, value in self.resources.items())


@dataclass(frozen=True)
class ClusterStatus:
    address: str | None
    state: str  # "running" | "external" | "stopped" | "unreachable"
    workers: dict[str, dict[str, float]] = field(default_factory=dict)  # address -> resources
    detail: str = ""


def dask_dir(paths: StatePaths) -> Path:
    return paths.home / "dask"


def worker_specs(capacities: Mapping[str, Mapping[str, float]], workers: int = 1) -> list[WorkerSpec]:
    """`workers` worker processes per pool sharing its capacity evenly (GPUs as whole
    units, the first workers taking the remainder); threads = the share of cores, rounded up.

    >>> [w.resources for w in worker_specs({"local": {"cpu": 4, "gpu": 0, "mem_gib": 8}}, 2)][0]
    {'local.cpu': 2.0, 'local.gpu': 0.0, 'local.mem_gib': 4.0}
    """
    if workers < 1:
        raise ValueError(f"workers={workers}: each pool needs at least one worker process. Fix: --workers 1 or more")
    specs = []
    for pool, capacity in sorted(capacities.items()):
        gpus = int(capacity.get("gpu", 0))
        for index in range(workers):
            share = {
                "cpu": float(capacity.get("cpu", 0.0)) / workers,
                "gpu": float(gpus // workers + (1 if index < gpus % workers else 0)),
                "mem_gib": float(capacity.get("mem_gib", 0.0)) / workers,
            }
            specs.append(
                WorkerSpec(f"{pool}-{index}", pool, max(1, math.ceil(share["cpu"] - 1e-9)), pool_resources(pool, share))
            )
    return specs


def _record(paths: StatePaths) -> dict[str, Any]:
    try:
        record = json.loads(cluster_file(paths).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _pid_file(paths: StatePaths, name: str) -> Path:
    return dask_dir(paths) / f"{name}.pid"


def _live(paths: StatePaths, name: str) -> int | None:
    record = read_pid_file(_pid_file(paths, name))
    if record is None:
        return None
    pid, started = record
    return pid if same_process(pid, started, marker="distributed.cli") else None


def _env(paths: StatePaths) -> dict[str, str]:
    """The workers' environment: this process's (its Prefect server and result storage,
    set by apply_client_env), with the project folder importable so that the components'
    modules unpickle on the workers."""
    env = dict(os.environ)
    project = str(paths.project)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project, env.get("PYTHONPATH", "")) if p)
    return env


def _answers(address: str, expected_workers: int = 0) -> bool:
    try:
        return len(cluster_resources(address, timeout=2.0)) >= expected_workers
    except DaskClusterError:
        return False


def up(
    paths: StatePaths,
    capacities: Mapping[str, Mapping[str, float]] | None = None,
    workers: int = 1,
    port: int = 0,
    address: str | None = None,
) -> ClusterStatus:
    """Start (or keep) the local cluster for the pools' `capacities`, or with `address`
    record a running scheduler instead. Returns its status."""
    make_private_dir(dask_dir(paths))
    if address:
        found = cluster_resources(address, timeout=settings().dask_connect_seconds)  # DaskClusterError names the fix
        write_private(cluster_file(paths), json.dumps({"address": address, "external": True}))
        return ClusterStatus(address, "external", found)
    current = status(paths, use_setting=False)  # the recorded cluster, whatever PLANFLOW_DASK_ADDRESS says
    if current.state in ("running", "external"):
        return current
    if not capacities:
        raise ValueError("no pool to size the Dask workers from. Fix: planflow pools set NAME --cpu N --mem-gib N")
    if port and port_in_use(DEFAULT_HOST, port):  # before anything starts: a client asking whatever
        # listens there for a Dask scheduler waited for an answer without bound
        raise DaskClusterError(
            f"port {port} on {DEFAULT_HOST} is already in use. Fix: choose another --port, or leave it out (a free one)"
        )
    down(paths)  # whatever a stale record still names
    specs = worker_specs(capacities, workers)
    env = _env(paths)
    logs = dask_dir(paths)
    port = port or free_port()
    address = f"tcp://{DEFAULT_HOST}:{port}"
    with private_files():
        scheduler = spawn(
            [sys.executable, "-m", SCHEDULER_MODULE, "--host", DEFAULT_HOST, "--port", str(port), "--no-dashboard"],
            logs / "scheduler.log",
            env,
            paths.project,
        )
        write_pid_file(_pid_file(paths, "scheduler"), scheduler.pid)
        if not wait_until(lambda: scheduler.poll() is None and _answers(address), START_SECONDS, interval=0.3):
            down(paths)
            raise DaskClusterError(
                f"the Dask scheduler did not answer at {address} within {START_SECONDS:.0f} s; its log "
                f"({logs / 'scheduler.log'}) ends:\n{log_tail(logs / 'scheduler.log')}"
            )
        for spec in specs:
            command = [sys.executable, "-m", WORKER_MODULE, address, "--host", DEFAULT_HOST, "--name", spec.name]
            command += ["--nthreads", str(spec.nthreads), "--resources", spec.resources_arg(), "--no-dashboard"]
            process = spawn(command, logs / f"{spec.name}.log", env, paths.project)
            write_pid_file(_pid_file(paths, spec.name), process.pid)
        record = {
            "address": address,
            "external": False,
            "started": time.time(),
            "workers": {s.name: {"pool": s.pool, "nthreads": s.nthreads, "resources": s.resources} for s in specs},
        }
        write_private(cluster_file(paths), json.dumps(record, indent=2))
    if not wait_until(lambda: _answers(address, len(specs)), START_SECONDS, interval=0.3):
        tails = "\n".join(f"--- {s.name}.log:\n{log_tail(logs / f'{s.name}.log', 8)}" for s in specs)
        down(paths)
        raise DaskClusterError(
            f"not all {len(specs)} Dask worker(s) joined the scheduler at {address} within {START_SECONDS:.0f} s:\n"
            + tails
        )
    return status(paths)


def down(paths: StatePaths) -> list[str]:
    """Stop the recorded local cluster's workers, then its scheduler (an external one is
    only forgotten). Returns the names of the processes stopped."""
    record = _record(paths)
    stopped = []
    for name in [*record.get("workers", {}), "scheduler"]:
        pid = _live(paths, name)
        if pid is not None and stop_group(pid):
            stopped.append(name)
        _pid_file(paths, name).unlink(missing_ok=True)
    cluster_file(paths).unlink(missing_ok=True)
    return stopped


def status(paths: StatePaths, address: str | None = None, use_setting: bool = True) -> ClusterStatus:
    """The cluster runs use: `address`, else PLANFLOW_DASK_ADDRESS (with `use_setting`),
    else the recorded one; its workers and the resources each offers."""
    record = _record(paths)
    chosen = address or (settings().dask_address if use_setting else None)
    external = bool(chosen) or bool(record.get("external"))
    address = chosen or record.get("address")
    if not address:
        return ClusterStatus(None, "stopped", detail="start: planflow dask up")
    if not external and _live(paths, "scheduler") is None:
        return ClusterStatus(address, "stopped", detail="the recorded scheduler is gone; start: planflow dask up")
    try:
        found = cluster_resources(address, timeout=settings().dask_connect_seconds)
    except DaskClusterError as exc:
        return ClusterStatus(address, "unreachable", detail=str(exc))
    return ClusterStatus(address, "external" if external else "running", found)
