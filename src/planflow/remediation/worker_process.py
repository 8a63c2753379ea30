"""The remediation worker as a background process: started by `planflow stack up`
(`worker_up`, idempotent; pid and start time under <state>/monitoring/), found again
(`worker_pid`) and stopped (`worker_down`); `start_remediation_worker` for tests and
demos that run their own. The worker itself is planflow.remediation.worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from planflow.monitoring.metrics import pushgateway_url_from_env
from planflow.ops.workers import start_process, start_ticks, stop_group
from planflow.ops.workers import stop_process as stop_worker_process
from planflow.remediation.names import REMEDIATION_POOL
from planflow.settings import StatePaths, client_env, write_private


def start_remediation_worker(
    log_file: Path,
    query_seconds: float = 1.0,
    env: dict[str, str] | None = None,
    limit: int = 4,
    name: str | None = None,
) -> subprocess.Popen:
    """The remediation worker (remediation/worker.py: runs the remediation flows in its
    own warm process) on `planflow-remediation`, polling every `query_seconds`
    (Prefect's default 10 s would dominate the alert-to-remediation latency), at most
    `limit` remediation flow runs at once (a storm queues)."""
    name = name or f"{REMEDIATION_POOL}-{os.getpid()}-{os.urandom(3).hex()}"
    return start_process(
        [
            sys.executable,
            "-m",
            "planflow.remediation.worker",
            "--pool",
            REMEDIATION_POOL,
            "--name",
            name,
            "--limit",
            str(limit),
            "--query-seconds",
            f"{query_seconds:g}",
        ],
        log_file,
        dict(os.environ if env is None else env),
    )


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a process started with start_new_session (its whole group)."""
    stop_worker_process(process, timeout)


def _worker_pid_file(paths: StatePaths) -> Path:
    return paths.home / "monitoring" / "remediation-worker.pid"


def worker_pid(paths: StatePaths | None = None) -> int | None:
    """The pid of the remediation worker `worker_up` started, if it still runs."""
    paths = paths or StatePaths.discover()
    try:
        pid, ticks = (int(x) for x in _worker_pid_file(paths).read_text().split())
    except (OSError, ValueError):
        return None
    return pid if start_ticks(pid) == ticks else None  # the same process, not a recycled pid


def worker_up(paths: StatePaths | None = None, query_seconds: float = 1.0) -> int:
    """Start the remediation worker for `planflow stack up` (idempotent: a live recorded
    worker is kept); pid and log under <state>/monitoring/. Returns its pid."""
    paths = paths or StatePaths.discover()
    running = worker_pid(paths)
    if running:
        return running
    env = {**os.environ, **client_env(paths)}
    if os.environ.get("PREFECT_API_URL"):
        env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]
    gateway = pushgateway_url_from_env()
    if gateway:
        env["PLANFLOW_PUSHGATEWAY_URL"] = gateway
    process = start_remediation_worker(
        paths.home / "monitoring" / "remediation-worker.log", query_seconds=query_seconds, env=env
    )
    pid_file = _worker_pid_file(paths)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    write_private(pid_file, f"{process.pid} {start_ticks(process.pid)}")
    return process.pid


def worker_down(paths: StatePaths | None = None, timeout: float = 20.0) -> bool:
    """Stop the worker `worker_up` started (the same process: pid and start time)."""
    paths = paths or StatePaths.discover()
    pid = worker_pid(paths)
    _worker_pid_file(paths).unlink(missing_ok=True)
    if pid is None:
        return False
    return stop_group(pid, timeout)
