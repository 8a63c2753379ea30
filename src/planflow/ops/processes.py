"""Background processes planflow starts and supervises (workers, monitoring services):
start one in a session of its own, know it again later, stop it with its group, wait
for something with a bound.

Identity: a pid alone is not enough (the kernel recycles pids), so a pid file holds the
pid and the process's start time (`start_ticks`), and `same_process` checks both, or
the command line when only a pid was recorded. psutil reads them; nothing here imports
Prefect, so the Prefect server's own supervision can use it before Prefect is imported.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from planflow.settings import DEFAULT_HOST

KILL_GRACE_SECONDS = 5.0  # after SIGKILL, how long a process may take to vanish


def spawn(
    command: list[str], log_file: Path, env: Mapping[str, str], cwd: Path, die_with_parent: bool = False
) -> subprocess.Popen:
    """`command` in the background, in a session (and process group) of its own, with
    stdout and stderr appended to `log_file` (created readable by its user only).
    `die_with_parent`: the kernel sends it SIGTERM when the calling thread's process
    dies (Linux's PR_SET_PDEATHSIG), so a supervisor killed with SIGKILL leaves no
    orphan serving on its ports."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
        return subprocess.Popen(
            command,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=cwd,
            preexec_fn=_term_with_parent() if die_with_parent and sys.platform == "linux" else None,  # noqa: PLW1509
        )


def _term_with_parent() -> Callable[[], None]:
    """The child's hook before exec: SIGTERM when this process dies (kept across exec).
    Resolved here, in the parent: the child between fork and exec only calls prctl (no
    import, no dlopen, which could wait on a lock another thread held at the fork), and
    ends at once when the parent died before prctl took effect."""
    import ctypes  # noqa: PLC0415 (Linux only, and only here)

    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return hook


PR_SET_PDEATHSIG = 1


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Call `check` every `interval` seconds until it returns true (True) or `timeout`
    seconds have passed (False). The caller says what timed out."""
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_result(lambda done: not done),
        retry_error_callback=lambda _state: False,
    )
    return bool(retrying(check))


def _ticks(process: psutil.Process) -> int:
    # Seconds since boot: both terms move together when the wall clock is set, so the
    # difference does not (on Linux it is /proc/<pid>/stat's start time, in ticks).
    return round((process.create_time() - psutil.boot_time()) * 100)


def _exited(process: psutil.Process) -> bool:
    """Gone, or a zombie: it has ended, and its parent (a Popen, when it is ours) reaps
    it and keeps its exit code."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in hundredths of a second since boot (unaffected by clock
    changes): with the pid, an identity that a recycled pid does not share. None when
    no such process runs (or it is a zombie)."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            return None if process.status() == psutil.STATUS_ZOMBIE else _ticks(process)
    except psutil.Error:
        return None


def command_line(process: psutil.Process, within: float = 2.0) -> list[str]:
    """`process`'s command line. A process in the middle of exec has an empty one for a
    moment (the kernel sets it after the close-on-exec pipe that ends `Popen` is
    closed), so an empty one is read again for up to `within` seconds."""
    retrying = Retrying(
        stop=stop_after_delay(within),
        wait=wait_fixed(0.02),
        retry=retry_if_result(lambda line: not line),
        retry_error_callback=lambda state: state.outcome.result(),
    )
    return retrying(process.cmdline)


def same_process(pid: int, started: int | None = None, marker: str | None = None) -> bool:
    """`pid` runs, is no zombie, started at `started` (from `start_ticks`) when given,
    and has `marker` in its command line when given."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            if started is not None and _ticks(process) != started:
                return False
            return marker is None or marker in "\0".join(command_line(process))
    except psutil.Error:
        return False


def is_our_process(pid: int, marker: str) -> bool:
    """The process `pid` runs and its command line contains `marker` (a recycled pid
    belongs to another program and is never signalled)."""
    return same_process(pid, marker=marker)


def children(pid: int) -> list[int]:
    """The live (not zombie) child processes of `pid`, e.g. a worker's flow runs."""
    try:
        kids = psutil.Process(pid).children()
    except psutil.Error:
        return []
    live = []
    for kid in kids:
        try:
            if kid.status() != psutil.STATUS_ZOMBIE:
                live.append(kid.pid)
        except psutil.Error:
            continue
    return live


def write_pid_file(path: Path, pid: int) -> None:
    """Record `pid` with its start time, for `read_pid_file` and `same_process`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {start_ticks(pid) or 0}")


def read_pid_file(path: Path) -> tuple[int, int | None] | None:
    """(pid, start ticks) from `path`; a file holding only a pid gives (pid, None);
    None when there is no readable file."""
    try:
        fields = [int(x) for x in path.read_text().split()]
    except (OSError, ValueError):
        return None
    if not fields:
        return None
    started = fields[1] if len(fields) > 1 and fields[1] > 0 else None
    return fields[0], started


def signal_group(pid: int, sig: int) -> bool:
    """Send `sig` to the process group led by `pid`; False when there is none."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    return True


def stop_group(pid: int, timeout: float = 20.0, reap: bool = False) -> bool:
    """SIGTERM the process group of `pid`, SIGKILL it after `timeout` seconds; True once
    `pid` has exited, False if even SIGKILL did not end it. It is not reaped here unless
    `reap`, so that a Popen holding it still reads its exit code. With `reap`, a child of
    this process that was started and let go (its Popen dropped, as a rescale's workers)
    is reaped: else it stays a zombie until this process starts another subprocess."""
    try:
        leader: psutil.Process | None = psutil.Process(pid)
    except psutil.NoSuchProcess:
        leader = None
    if not signal_group(pid, signal.SIGTERM) or leader is None:
        return True
    if not wait_until(lambda: _exited(leader), timeout, interval=0.1):
        signal_group(pid, signal.SIGKILL)
        if not wait_until(lambda: _exited(leader), KILL_GRACE_SECONDS, interval=0.1):
            return False
    if reap:
        with contextlib.suppress(ChildProcessError):  # not a child of this process: its parent reaps it
            os.waitpid(pid, os.WNOHANG)
    return True


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a process started by `spawn` (its whole group) and reap it."""
    if process.poll() is not None:
        return
    signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        signal_group(process.pid, signal.SIGKILL)
        process.wait(KILL_GRACE_SECONDS)


def log_tail(path: Path, lines: int = 25) -> str:
    """The last `lines` lines of a log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def port_in_use(host: str, port: int) -> bool:
    """Something accepts connections on host:port (a connect, bounded at 0.5 s)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


PORTS_FROM = 10000  # free ports are picked from here up to the kernel's ephemeral range
_handed_out: set[int] = set()  # ports this process handed out: never handed out twice
_handed_lock = threading.Lock()


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now, for a server started next."""
    return free_block(1, host)


def free_block(size: int, host: str = DEFAULT_HOST) -> int:
    """A port p with p .. p+size-1 all free on `host`, none handed out before by this
    process. Picked at random outside the kernel's ephemeral range (below it, else above
    it): a port the kernel chose (bind to port 0) is one it hands to outgoing connections
    and to other bind(0)s, so it could be taken between this check and the server's bind
    (in CI: "address already in use"), and it handed the same one out twice in a row (3 in
    4000 groups of five). An error other than "in use" (a host this machine does not have)
    is raised as it is."""
    rng = random.Random()
    low, high = ephemeral_range()
    with _handed_lock:
        for _ in range(200):
            if low - size > PORTS_FROM:
                base = rng.randrange(PORTS_FROM, low - size)
            elif 65535 - size > high + 1:
                base = rng.randrange(high + 1, 65535 - size)
            else:  # the kernel's range covers (nearly) everything
                base = _kernel_port(host)
            block = range(base, base + size)
            if base + size < 65535 and _handed_out.isdisjoint(block) and all(_bindable(host, p) for p in block):
                _handed_out.update(block)
                return base
    raise RuntimeError(f"no {size} consecutive free TCP ports on {host} after 200 tries")


def ephemeral_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections (32768-60999 where it cannot say)."""
    try:
        low, high = (int(x) for x in Path(path).read_text().split()[:2])
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _kernel_port(host: str) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _bindable(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True
