"""This machine's turn to plan: its runs queue for the planning slot here, not at the server.

One run at a time plans into the pool calendar: it holds the planning slot, a concurrency
limit of one on the Prefect server (calendar.planning_lock). A run that finds it held
asked the server again every PLANNING_POLL_SECONDS (0.3 s, jittered): in a burst
of runs on one machine that was a refused increment (a write) and a read per poll per
waiting run, and each hand-over waited for the next poll, about 0.15 s, while the slot
stood free.

So the runs of one machine first take an exclusive lock (flock) on a file in the user's
private folder for this server (slot_wake.py's): the kernel hands it to the next run the
moment the holder lets go, and only the holder asks the server, which still decides
between machines. The holder lets go of the lock only after the server's slot is given
back. A lock dies with its process, so a crashed run frees it at once; a run that hangs
holding it is waited for at most LOCAL_WAIT_SECONDS, after which its neighbours ask the
server as before (where the hung run's lease runs out in its time).

Without the private folder (PLANFLOW_SLOT_WAKE=false, no Unix sockets) or fcntl, there
is no local turn and runs ask the server as before.

    turn = take_turn(deadline)     # None: no local turn (ask the server anyway)
    ... take and give back the server's planning slot ...
    leave(turn)
"""

from __future__ import annotations

import contextlib
import os
import time

from planflow.runtime.slot_wake import private_subfolder

try:
    import fcntl
except ImportError:  # not a Unix: no local turn
    fcntl = None  # type: ignore[assignment]

LOCAL_WAIT_SECONDS = 10.0  # a run holds the turn for a plan (under a second); longer: likely hung
LOCAL_POLL_SECONDS = 0.01  # how often a waiting run tries the lock (a system call, no request)
LOCK_NAME = "planning.lock"


def take_turn(deadline: float, wait: float = LOCAL_WAIT_SECONDS) -> int | None:
    """This machine's turn to ask for the planning slot: the file descriptor holding the
    lock, or None where there is no local turn or it was not had within `wait` seconds or
    by `deadline` (time.monotonic): the caller then asks the server all the same."""
    folder = private_subfolder("planning") if fcntl is not None else None
    if folder is None:
        return None
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    until = min(deadline, time.monotonic() + wait)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= until:
                os.close(fd)
                return None
            time.sleep(LOCAL_POLL_SECONDS)
        except OSError:
            os.close(fd)
            return None


def leave(turn: int | None) -> None:
    """Let the next run of this machine take its turn: unlocked first (a process forked
    meanwhile shares the open file, and would keep the lock until it ends), then closed."""
    if turn is not None and fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(turn, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(turn)
