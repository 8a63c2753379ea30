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
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
    check_address,
    cluster_file,
    cluster_resources,
    cluster_workers,
    pool_resources,
)
from planflow.settings import DEFAULT_HOST, StatePaths, make_private_dir, private_files, settings, write_private

SCHEDULER_MODULE = "distributed.cli.dask_scheduler"
WORKER_MODULE = "distributed.cli.dask_worker"
# No dashboard; the HTTP server Dask starts regardless (health, metrics) on a free port of
# the loopback: by default it took :8787 on every interface
HTTP_ON_LOOPBACK = ["--no-dashboard", "--dashboard-address", f"{DEFAULT_HOST}:0"]
START_SECONDS = 60.0  # how long the scheduler, then all workers, may take to answer
GONE = "its process has ended"  # a recorded worker's, nanny and all: `up` starts it again


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
    # a local cluster's workers that `up` started and that are not joined: name -> why
    missing: dict[str, str] = field(default_factory=dict)


def dask_dir(paths: StatePaths) -> Path:
    return paths.home / "dask"


def local_capacities(
    capacities: Mapping[str, Mapping[str, float]], machine: Mapping[str, float]
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The pools' capacities as workers on this machine can offer them: at most the cores,
    GPUs and memory it has (`machine`, by resource). A pool declared for another machine,
    e.g. the `kubernetes` pool's gpu=4, made a local worker offer 4 GPUs on a machine with
    none, and a gpu=1 step that `planflow plan` refused ran there in Dask mode; its 32 cores
    made the plan run 32 steps at once on 2 cores. Returns them and the pools cut, each
    with what was cut.

    >>> local_capacities({"k8s": {"cpu": 32, "gpu": 4, "mem_gib": 8}}, {"cpu": 2, "gpu": 0, "mem_gib": 16})
    ({'k8s': {'cpu': 2.0, 'gpu': 0.0, 'mem_gib': 8.0}}, ['k8s (cpu=32, gpu=4)'])
    """
    offered, cut = {}, []
    for pool, capacity in sorted(capacities.items()):
        offered[pool] = {resource: float(amount) for resource, amount in capacity.items()}
        over = [r for r in ("cpu", "gpu", "mem_gib") if r in machine and offered[pool].get(r, 0.0) > machine[r]]
        if over:
            cut.append(f"{pool} ({', '.join(f'{r}={offered[pool][r]:g}' for r in over)})")
            offered[pool].update({r: float(machine[r]) for r in over})
    return offered, cut


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
    workers: int | None = None,
    port: int = 0,
    address: str | None = None,
) -> ClusterStatus:
    """Start (or keep) the local cluster for the pools' `capacities`, `workers` worker
    processes per pool (default 1; a running cluster keeps its count), or with `address`
    record a running scheduler instead. Returns its status. PLANFLOW_DASK_ADDRESS set:
    checks that scheduler and starts nothing. A running local cluster sized otherwise is
    refused, naming the difference."""
    make_private_dir(dask_dir(paths))
    if address:
        return _use_address(paths, address)
    chosen = settings().dask_address
    if chosen:  # runs use that scheduler: a local one started now would stand idle
        found = cluster_resources(
            chosen,
            fix=f"start the scheduler at {chosen}, or unset PLANFLOW_DASK_ADDRESS to have "
            "planflow dask up start a local cluster",
        )
        return ClusterStatus(chosen, "external", found, detail="(PLANFLOW_DASK_ADDRESS; nothing started)")
    current = status(paths, use_setting=False)  # the recorded cluster
    if current.state == "external":
        return current
    if current.state == "running":
        _refuse_other_sizing(paths, current, capacities, workers, port)
        return _restart_missing(paths, current)
    if not capacities:
        raise ValueError("no pool to size the Dask workers from. Fix: planflow pools set NAME --cpu N --mem-gib N")
    if port and port_in_use(DEFAULT_HOST, port):  # before anything starts: a client asking whatever
        # listens there for a Dask scheduler waited for an answer without bound
        raise DaskClusterError(
            f"port {port} on {DEFAULT_HOST} is already in use. Fix: choose another --port, or leave it out (a free one)"
        )
    down(paths)  # whatever a stale record still names
    specs = worker_specs(capacities, workers or 1)
    env = _env(paths)
    logs = dask_dir(paths)
    port = port or free_port()
    address = f"tcp://{DEFAULT_HOST}:{port}"
    with private_files():
        scheduler = spawn(
            [sys.executable, "-m", SCHEDULER_MODULE, "--host", DEFAULT_HOST, "--port", str(port), *HTTP_ON_LOOPBACK],
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
            _spawn_worker(paths, spec, address, env)
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


def _spawn_worker(paths: StatePaths, spec: WorkerSpec, address: str, env: Mapping[str, str]) -> None:
    """One worker process (with its nanny, which restarts it when it dies) for `spec`."""
    command = [sys.executable, "-m", WORKER_MODULE, address, "--host", DEFAULT_HOST, "--name", spec.name]
    command += ["--nthreads", str(spec.nthreads), "--resources", spec.resources_arg(), *HTTP_ON_LOOPBACK]
    process = spawn(command, dask_dir(paths) / f"{spec.name}.log", env, paths.project)
    write_pid_file(_pid_file(paths, spec.name), process.pid)


def _restart_missing(paths: StatePaths, current: ClusterStatus) -> ClusterStatus:
    """The running local cluster, with the workers whose processes ended (nanny and all:
    killed, or out of memory) started again as recorded; `up` kept the cluster and said
    nothing of them, and runs waited for resources that no worker offered any more."""
    gone = [name for name, why in current.missing.items() if why.startswith(GONE)]
    if not gone:
        return current
    record, env = _record(paths), _env(paths)
    with private_files():
        for name in gone:
            worker = record["workers"][name]
            spec = WorkerSpec(name, worker["pool"], int(worker["nthreads"]), dict(worker["resources"]))
            _spawn_worker(paths, spec, str(current.address), env)
    address, expected = str(current.address), len(record["workers"])
    if not wait_until(lambda: _answers(address, expected), START_SECONDS, interval=0.3):
        tails = "\n".join(f"--- {n}.log:\n{log_tail(dask_dir(paths) / f'{n}.log', 8)}" for n in gone)
        raise DaskClusterError(
            f"worker(s) {', '.join(gone)} started again did not join the scheduler at {address} within "
            f"{START_SECONDS:.0f} s:\n{tails}"
        )
    return replace(status(paths), detail=f"started again: {', '.join(gone)}")


def _use_address(paths: StatePaths, address: str) -> ClusterStatus:
    """Record the running scheduler at `address` as the one runs use (starting nothing),
    once it answers; refused while a local cluster of ours runs, which it would orphan."""
    check_address(address)
    record = _record(paths)
    if not record.get("external") and _live(paths, "scheduler") is not None:
        raise DaskClusterError(
            f"a local Dask cluster started by planflow dask up runs at {record.get('address')}; recording "
            f"{address} instead would leave its processes running, unused and unmanaged. Fix: planflow dask down, "
            f"then planflow dask up --address {address}"
        )
    found = cluster_resources(
        address,
        timeout=settings().dask_connect_seconds,
        fix=f"start the scheduler at {address} first (e.g. dask scheduler --port PORT, from the project's "
        "folder), or check the address",
    )
    write_private(cluster_file(paths), json.dumps({"address": address, "external": True}))
    return ClusterStatus(address, "external", found)


def _refuse_other_sizing(
    paths: StatePaths,
    current: ClusterStatus,
    capacities: Mapping[str, Mapping[str, float]] | None,
    workers: int | None,
    port: int,
) -> None:
    """DaskClusterError when the running local cluster is not the one asked for now
    (another port, worker count, pool or pool size): `up` keeps a running cluster, and
    keeping a different one without a word left runs on the old sizing."""
    record = _record(paths)
    running = {name: (w.get("pool"), w.get("resources")) for name, w in record.get("workers", {}).items()}
    counts = Counter(pool for pool, _ in running.values())
    asked = {
        s.name: (s.pool, s.resources)
        for pool, capacity in (capacities or {}).items()
        for s in worker_specs({pool: capacity}, workers or counts.get(pool, 1))
    }
    differences = []
    if port and not str(current.address or "").endswith(f":{port}"):
        differences.append(f"it listens at {current.address}, not on port {port}")
    if asked != running:
        differences.append(f"its workers are {_sizing(running)}; asked for: {_sizing(asked)}")
    if differences:
        raise DaskClusterError(
            f"a local Dask cluster already runs at {current.address}, unlike the one asked for: "
            + "; ".join(differences)
            + ". Fix: planflow dask down, then planflow dask up again with the options you want"
        )


def _sizing(workers: Mapping[str, tuple[Any, Any]]) -> str:
    per_pool: dict[str, list[str]] = {}
    for _name, (pool, resources) in sorted(workers.items()):
        offers = " ".join(f"{k}={v:g}" for k, v in sorted((resources or {}).items()))
        per_pool.setdefault(str(pool), []).append(offers)
    return "; ".join(
        f"{pool}: {len(w)} x ({w[0]})" if len(set(w)) == 1 else f"{pool}: {', '.join(w)}"
        for pool, w in sorted(per_pool.items())
    )


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
        found = cluster_workers(address, timeout=settings().dask_connect_seconds)
    except DaskClusterError as exc:
        return ClusterStatus(address, "unreachable", detail=str(exc))
    offers = {worker: dict(w.get("resources") or {}) for worker, w in found.items()}
    if external:
        return ClusterStatus(address, "external", offers)
    joined = {str(w.get("name")) for w in found.values()}
    missing = {
        name: (
            f"{GONE} (log: {dask_dir(paths) / f'{name}.log'})"
            if _live(paths, name) is None
            else "its process runs but it has not joined the scheduler (starting, or restarted by its nanny)"
        )
        for name in record.get("workers", {})
        if name not in joined
    }
    return ClusterStatus(address, "running", offers, missing=missing)
