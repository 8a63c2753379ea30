"""Local Prefect workers as child processes: start one, stop one, tell if one is busy.

Used by `planflow stack up` (the remediation worker), the rescale remediation (extra
workers for a pool), `planflow demo heal` and the tests. A worker started on someone's
behalf (a rescale) is recorded in a folder (`record_worker`: pid, start time, name), so
that `planflow stack down` stops it even when nothing else remembers it
(`stop_recorded_workers`). A worker runs in a session of
its own, so stopping it with its process group also stops the flow run processes it
started; `busy()` tells whether it has any, so that a scale-down can wait for them
instead of killing them. The process handling itself is planflow.ops.processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from prefect.client.orchestration import get_client

from planflow.ops.processes import (
    children,
    is_our_process,
    read_pid_file,
    same_process,
    spawn,
    start_ticks,
    stop_group,
    stop_process,
    write_pid_file,
)
from planflow.settings import project_root

# Callers import these from here (a worker's identity, children and stop).
__all__ = [
    "busy",
    "children",
    "forget_worker",
    "is_our_process",
    "prefect_executable",
    "record_worker",
    "recorded_workers",
    "start_process",
    "start_ticks",
    "start_worker",
    "stop_group",
    "stop_process",
    "stop_recorded_workers",
    "worker_seen",
]

RECORD_SUFFIX = ".worker.pid"


def prefect_executable() -> str:
    """The `prefect` command of this interpreter's environment."""
    return str(Path(sys.executable).with_name("prefect"))


SERVER_ONLY = ("PREFECT_SERVER_", "PREFECT_API_DATABASE_")  # the server's settings: its auth string, database URL


def worker_environment(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without the Prefect server's own settings. A worker is a client, and Prefect
    copies the settings it runs with into every flow run's job (a Docker container's
    environment, shown by `docker inspect` and kept with the exited container): a shell
    that had started the server with PREFECT_SERVER_API_AUTH_STRING handed the server's
    secret to every container."""
    kept = {key: value for key, value in env.items() if not key.startswith(SERVER_ONLY)}
    # set empty, not only left out: Prefect also reads it from the profile and .env files
    return {**kept, "PREFECT_SERVER_API_AUTH_STRING": ""}


def start_worker(
    pool: str,
    log_file: Path,
    *,
    pool_type: str = "process",
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    query_seconds: float | None = 1.0,
    heartbeat_seconds: float | None = None,
    limit: int | None = None,
) -> subprocess.Popen:
    """`prefect worker start --pool POOL` in the background, from the project's folder
    (process deployments run the code there), logging to `log_file`.

    `query_seconds`: how often it polls (Prefect's default 10 s dominates the latency of
    a remediation or a demo); `heartbeat_seconds`: how often it reports (a short one lets
    the server notice a dead worker sooner); `limit`: flow runs at once."""
    environment = worker_environment(os.environ if env is None else env)
    if query_seconds is not None:
        environment["PREFECT_WORKER_QUERY_SECONDS"] = f"{query_seconds:g}"
        environment["PREFECT_WORKER_PREFETCH_SECONDS"] = "0"
    if heartbeat_seconds is not None:
        environment["PREFECT_WORKER_HEARTBEAT_SECONDS"] = f"{heartbeat_seconds:g}"
    command = [
        prefect_executable(),
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        pool_type,
        "--name",
        name or f"{pool}-{os.getpid()}-{os.urandom(3).hex()}",
    ]
    if limit is not None:
        command += ["--limit", str(limit)]
    return start_process(command, log_file, environment)


def start_process(command: list[str], log_file: Path, env: Mapping[str, str]) -> subprocess.Popen:
    """A background process in a session of its own, started from the project's folder
    with that folder on PYTHONPATH (so it imports the project's pipelines as the user's
    own commands do), logging to `log_file`."""
    root = str(project_root())
    environment = dict(env)
    if root not in environment.get("PYTHONPATH", "").split(os.pathsep):
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [root, environment.get("PYTHONPATH")]))
    return spawn(command, log_file, environment, cwd=Path(root))


def worker_seen(pool: str, name: str) -> bool:
    """The worker called `name` has registered with `pool` (sent a heartbeat)."""
    with get_client(sync_client=True) as client:
        return any(w.name == name for w in client.read_workers_for_work_pool(pool))


def busy(pid: int) -> bool:
    """A worker with a flow run in progress (it has a live child process)."""
    return bool(children(pid))


# -- workers recorded for a later stop (`planflow stack down`) ---------------------------
def record_worker(folder: Path, name: str, pid: int) -> Path:
    """Remember a worker started in the background: `<folder>/<name>.worker.pid` holds its
    pid and start time (a recycled pid is never taken for it)."""
    path = folder / f"{name}{RECORD_SUFFIX}"
    write_pid_file(path, pid)
    return path


def forget_worker(folder: Path, name: str) -> None:
    (folder / f"{name}{RECORD_SUFFIX}").unlink(missing_ok=True)


def recorded_workers(folder: Path) -> dict[str, int]:
    """The recorded workers that still run: name -> pid (records of ended ones removed)."""
    alive = {}
    for path in sorted(folder.glob(f"*{RECORD_SUFFIX}")) if folder.is_dir() else []:
        name = path.name.removesuffix(RECORD_SUFFIX)
        found = read_pid_file(path)
        if found and same_process(found[0], found[1], marker=name):
            alive[name] = found[0]
        else:
            path.unlink(missing_ok=True)
    return alive


def stop_recorded_workers(folder: Path, timeout: float = 15.0) -> dict[str, int]:
    """Stop every recorded worker still running (with its flow runs: its process group)
    and forget it; returns name -> pid of those stopped."""
    stopped = {}
    for name, pid in recorded_workers(folder).items():
        if stop_group(pid, timeout, reap=True):
            stopped[name] = pid
            forget_worker(folder, name)
    return stopped
