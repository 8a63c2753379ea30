"""Reads that this machine's runs share: a limit (or the calendar) one run read just now stands for the others.

A run waiting for its pool reads the pool's limits (run_slots.RunSlots.limit_now: before
asking again, and for its claims) once per dispatcher round or once a second. Eight
runs waiting on one machine each read the same limits: 950 of a fleet burst's 3,800
requests, each about 25 ms of the Prefect server's CPU, on the cores the components run
on. So each read is also left in a file of the user's (one per limit, in the private
folder of slot_wake.py), with when it began; a run about to read a limit first looks
there, and takes a read that began recently enough for it, exactly as it would take its
own. The calendar's looks are shared the same way (calendar.look_at_calendar: 272 reads
of every entry in a burst); a run's re-plan still reads it from the server.

Each read also says when it was answered: a run that takes it counts into it the slots
taken and given back on this machine since (announced with their counts: slot_wake.py;
HeardChanges), as into its own reads.

Nothing here grants anything: a read only decides whether to ask the server for slots,
whose increment is the one that counts. A stale, lost or forged file costs at most one
refused request or a wait until the limit is read again (a second at most). The folder
is private to the user (0700, checked); a file that cannot be read or parsed is taken as
absent. PLANFLOW_SLOT_WAKE=false turns it off with the wake-ups (each run reads for
itself).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planflow.runtime.slot_wake import private_subfolder

MAX_BYTES = 512  # a file longer than a read of one limit is not ours: taken as absent
CHANGES_KEPT_SECONDS = 5.0  # changes heard are kept this long: longer than any read stands


@dataclass(frozen=True)
class LimitSeen:
    """A limit as read: its size and the slots held (what RunSlots looks at)."""

    limit: int
    active_slots: int


def reads_folder() -> Path | None:
    """`<wake folder>/reads`, private to the user; None where there is no wake folder."""
    return private_subfolder("reads")


def _path(folder: Path, key: str) -> Path:
    return folder / f"r-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def load_read(key: str, began_after: float, max_bytes: int = MAX_BYTES) -> tuple[float, Any] | None:
    """The last shared read under `key` when it began after `began_after` (wall clock):
    (when it began, what was read); else None (none, older, too long, or unreadable)."""
    folder = reads_folder()
    if folder is None:
        return None
    try:
        with open(_path(folder, key), "rb") as f:
            raw = f.read(max_bytes + 1)
        if len(raw) > max_bytes:
            return None
        data = json.loads(raw)
        began = float(data["began"])
        if data["key"] != key or began <= began_after:
            return None
        return began, data["read"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_read(key: str, began: float, read: Any) -> None:
    """Leave a read (JSON) under `key`, begun at `began` (wall clock), for this machine's runs."""
    folder = reads_folder()
    if folder is None:
        return
    temporary = None
    try:
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".r-")
        with os.fdopen(descriptor, "w") as f:
            json.dump({"key": key, "began": began, "read": read}, f)
        os.replace(temporary, _path(folder, key))
    except (OSError, TypeError, ValueError):
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def load(name: str, began_after: float) -> tuple[float, LimitSeen | None, float] | None:
    """The last shared read of limit `name` when it began after `began_after` (wall clock):
    (when it began, the limit or None for a limit that does not exist, when it was
    answered); else None."""
    found = load_read(f"limit:{name}", began_after)
    if found is None:
        return None
    began, read = found
    try:
        if read.get("limit") is None:
            return began, None, float(read["answered"])
        return began, LimitSeen(int(read["limit"]), int(read["active_slots"])), float(read["answered"])
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def store(name: str, began: float, seen: LimitSeen | None, answered: float) -> None:
    """Leave a read of limit `name` (begun at `began`, answered at `answered`, wall clock)
    for this machine's runs."""
    read = {"limit": seen.limit, "active_slots": seen.active_slots} if seen else {"limit": None}
    store_read(f"limit:{name}", began, {**read, "answered": answered})


class HeardChanges:
    """The changes of limits' held slots one run heard announced on this machine
    (slot_wake.py: slots taken, +n, and given back, -n), counted into its reads of them.

        changes.heard("planflow-local-cpu-millicores", -1000)   # a give-back heard now
        changes.up_to_date(name, (began, LimitSeen(...), answered))
    """

    def __init__(self) -> None:
        self._changes: dict[str, list[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def heard(self, limit: str, change: int, at: float | None = None) -> None:
        """A change of `limit`'s held slots heard now (or `at`, wall clock)."""
        at = time.time() if at is None else at
        with self._lock:
            changes = self._changes.setdefault(limit, [])
            changes.append((at, change))
            while changes and changes[0][0] < at - CHANGES_KEPT_SECONDS:
                changes.pop(0)

    def up_to_date(self, name: str, seen: tuple[float, LimitSeen | None, float]) -> LimitSeen | None:
        """A read of limit `name` (began, as read, answered) with the changes heard since:
        slots given back since it began, slots taken since it was answered. A change heard
        while the read was on its way may be in it or not: counted so that the read errs
        towards free (the increment that follows finds out, and a refusal makes the read
        stale), not towards full (a step would wait for slots that are free)."""
        began, read, answered = seen
        if read is None:
            return None
        with self._lock:
            change = sum(
                n for at, n in self._changes.get(name, ()) if (n < 0 and at > began) or (n > 0 and at > answered)
            )
        return LimitSeen(read.limit, max(0, read.active_slots + change)) if change else read
