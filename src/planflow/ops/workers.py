"""Local Prefect workers as child processes: start one, stop one, tell if one is busy.

Used by `planflow stack up` (the remediation worker), the rescale remediation (extra
workers for a pool), `planflow demo heal` and the tests. A worker runs in a session of
its own (start_new_session), so stopping it with its process group also stops the flow
run processes it started; `busy()` tells whether it has any, so that a scale-down can
wait for them instead of killing them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from planflow.settings import project_root


def prefect_executable() -> str:
    """The `prefect` command of this interpreter's environment."""
    return str(Path(sys.executable).with_name("prefect"))


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
    """`prefect worker start --pool POOL` in the background, from the repository root
    (process deployments run the code there), logging to `log_file`.

    `query_seconds`: how often it polls (Prefect's default 10 s dominates the latency of
    a remediation or a demo); `heartbeat_seconds`: how often it reports (a short one lets
    the server notice a dead worker sooner); `limit`: flow runs at once."""
    environment = dict(os.environ if env is None else env)
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
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        return subprocess.Popen(
            command,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=root,
        )


def worker_seen(pool: str, name: str) -> bool:
    """The worker called `name` has registered with `pool` (sent a heartbeat)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return any(w.name == name for w in client.read_workers_for_work_pool(pool))


def is_our_process(pid: int, marker: str) -> bool:
    """The process `pid` runs and its command line contains `marker` (a recycled pid
    belongs to another program and is never signalled)."""
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot, /proc/<pid>/stat field 22): with
    the pid, an identity that a recycled pid does not share. None for a zombie or none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (a worker's flow runs)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(pid) and fields[0] != "Z":
            found.append(int(proc.name))
    return found


def busy(pid: int) -> bool:
    """A worker with a flow run in progress (it has a live child process)."""
    return bool(children(pid))


def stop_group(pid: int, timeout: float = 20.0) -> bool:
    """SIGTERM the process group of `pid`, SIGKILL it after `timeout`; True once it is gone."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # not our child: poll /proc
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                return True
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _zombie(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split() or ["?"])[0] == "Z"
    except OSError:
        return True


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a worker started by `start_worker` (its whole group)."""
    if process.poll() is None:
        stop_group(process.pid, timeout)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
