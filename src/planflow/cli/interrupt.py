"""Leaving after Ctrl-C without waiting for components Python cannot stop.

An in-process component runs in a thread, and Python has no way to stop a thread: on
SIGINT the flow run is marked Crashed and `planflow run` says so, but the interpreter's
exit then joins every thread still running, so a component in the middle of an hour of
training kept the command (and its terminal) for that hour, and a second Ctrl-C did not
help (a trial: 27 s more for a step with 28 s left). `exit_within` gives the process a
short grace to end as usual, then ends it: its run is over and nobody reads what those
threads return. Prefect's queued logs and events are sent before the grace starts
(bounded), so the run's log keeps its last lines; slots the components held go back to the shared pools with
their lease (PLANFLOW_SLOT_LEASE_SECONDS) or at once where the dispatcher gave them back.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from concurrent.futures import thread as futures_thread

from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker

from planflow.cli.common import warn

GRACE_SECONDS = 3.0  # how long a normal exit may take before the running threads are left behind
DRAIN_SECONDS = 5.0  # the most spent sending Prefect's queued logs and events before leaving


def _busy_threads() -> list[threading.Thread]:
    """The threads the exit waits for: every non-daemon thread, and every thread of a
    ThreadPoolExecutor (joined at exit, daemon or not: a thread started by a daemon
    thread is a daemon, as the task runner's are when planflow warms them)."""
    main = threading.main_thread()
    pooled = set(getattr(futures_thread, "_threads_queues", {}))  # private: none known on a Python without it
    return [t for t in threading.enumerate() if t is not main and t.is_alive() and (not t.daemon or t in pooled)]


def _drain() -> None:
    """Send what Prefect's log and event workers hold (their own exit handlers, which an
    `os._exit` skips), each for at most DRAIN_SECONDS."""
    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=DRAIN_SECONDS)
        except Exception as exc:  # leaving regardless: say what may be missing
            warn(f"the run's last {worker.__name__} items may not have reached the server: {exc!r}")


def _leave(code: int) -> None:
    busy = _busy_threads()
    if busy:
        warn(
            f"{len(busy)} thread(s) of this process still running ({', '.join(t.name for t in busy[:5])}): "
            "components running in process, which Python cannot stop; leaving them (the run is over)"
        )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def exit_within(code: int, grace: float = GRACE_SECONDS) -> None:
    """Send Prefect's queued logs and events now (each for at most DRAIN_SECONDS: the
    exit's own drain, cut by the grace on a slow server, lost them), then make sure the
    process ends with `code` at most `grace` seconds later, even when threads it cannot
    stop are running; call it, then exit as usual."""
    _drain()
    timer = threading.Timer(grace, _leave, args=(code,))
    timer.daemon = True  # not one of the threads the exit waits for
    timer.name = "planflow-exit-within"
    timer.start()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def sigterm_as_ctrl_c() -> None:
    """From now on SIGTERM (`timeout`, `kill`, a supervisor stopping the command) ends this
    process as Ctrl-C does, through its `finally` blocks: Python's default for SIGTERM ends
    it at once, and `planflow demo heal` stopped so left its work pool, blocks, deployments
    and a worker behind, which broke the next demo."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
