"""The embedded Prefect server: start, stop and inspect it.

`up` is idempotent: a healthy server recorded in the state folder is reused, a
stale pid file (its process gone) is cleaned, and a port held by something else
is reported with the fix. The server runs in its own process group so that `down`
stops it together with the children it spawns.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from planflow.settings import DEFAULT_HOST, DEFAULT_PORT, StatePaths, server_url


class StackError(RuntimeError):
    """The embedded server could not be started, found or stopped."""


@dataclass(frozen=True)
class ServerStatus:
    state: str  # "running" | "stopped" | "stale" | "unhealthy"
    url: str | None
    pid: int | None
    detail: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        # A recycled pid belongs to some other program: not our server.
        try:
            return b"prefect" in cmdline.read_bytes()
        except OSError:
            return False
    return True


def _read_pid(paths: StatePaths) -> int | None:
    try:
        return int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True when the Prefect API at `url` (ending in /api) answers its health check."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _clean(paths: StatePaths) -> None:
    for file in (paths.pid_file, paths.server_file):
        file.unlink(missing_ok=True)


def status(paths: StatePaths | None = None) -> ServerStatus:
    paths = paths or StatePaths.discover()
    pid = _read_pid(paths)
    url = paths.recorded_url()
    if pid is None:
        return ServerStatus("stopped", None, None, "no server started from this project")
    if not _pid_alive(pid):
        return ServerStatus("stale", url, pid, f"pid {pid} in {paths.pid_file} is not running")
    if url and healthy(url):
        return ServerStatus("running", url, pid)
    return ServerStatus("unhealthy", url, pid, f"process {pid} runs but {url}/health does not answer")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _prefect_executable() -> list[str]:
    script = Path(sys.executable).with_name("prefect")
    if script.exists():
        return [str(script)]
    found = shutil.which("prefect")
    if found:
        return [found]
    return [sys.executable, "-m", "prefect"]


def server_env(paths: StatePaths, host: str, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(paths.prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_API_URL=server_url(host, port),
        PREFECT_LOCAL_STORAGE_PATH=str(paths.results),
    )
    return env


def up(
    paths: StatePaths | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    timeout: float = 120.0,
) -> ServerStatus:
    """Start the embedded server unless it already runs; wait until it is healthy."""
    paths = paths or StatePaths.discover()
    current = status(paths)
    if current.running:
        return current
    if current.state == "unhealthy":
        # Still starting (another `up` in flight) or hung: give it the timeout.
        if current.url and _wait_healthy(current.url, current.pid, timeout):
            return status(paths)
        down(paths)
    elif current.state == "stale":
        _clean(paths)

    url = server_url(host, port)
    if _port_in_use(host, port):
        owner = "a Prefect server not started by planflow" if healthy(url) else "another program"
        raise StackError(
            f"port {port} on {host} is already in use by {owner}. "
            f"Fix: stop it, or choose another port with `planflow server up --port {port + 1}`."
        )

    for folder in (paths.home, paths.prefect_home, paths.results):
        folder.mkdir(parents=True, exist_ok=True)
    log = paths.log_file.open("ab")
    process = subprocess.Popen(
        [*_prefect_executable(), "server", "start", "--host", host, "--port", str(port)],
        env=server_env(paths, host, port),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=paths.home,
    )
    log.close()
    paths.pid_file.write_text(str(process.pid))
    paths.server_file.write_text(json.dumps({"url": url, "host": host, "port": port, "pid": process.pid}, indent=2))
    if not _wait_healthy(url, process.pid, timeout):
        down(paths)
        raise StackError(
            f"the Prefect server did not become healthy at {url} within {timeout:.0f} s. "
            f"Last lines of {paths.log_file}:\n{_tail(paths.log_file)}"
        )
    return status(paths)


def _wait_healthy(url: str, pid: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(url):
            return True
        if pid is not None and not _pid_alive(pid):
            return False
        time.sleep(0.5)
    return False


def down(paths: StatePaths | None = None, timeout: float = 20.0) -> ServerStatus:
    """Stop the embedded server (and its process group); clean its pid files."""
    paths = paths or StatePaths.discover()
    pid = _read_pid(paths)
    if pid is not None and _pid_alive(pid):
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.2)
        if _pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
    _clean(paths)
    return status(paths)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(os.getpgid(pid), sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
