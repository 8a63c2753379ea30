"""Slots handed from one run to the next on this machine, without a round trip to the server.

Every component's slots are held on the Prefect server as a lease (run_slots.py). When a
short component ends, its run gave the lease back (a decrement), and the run whose
component waited for those slots read the limit and asked for them (a read and an
increment): three requests, each about 25 ms of the server's CPU on the cores the
components run on, for slots that only moved from one process of this machine to
another. In the fleet benchmark's burst of 8 runs on 2 cores that was most of the
3,600 requests its runs sent (the default's runs: about 700).

So a run that gives back a lease of a pool's cpu, memory or gpu slots first leaves it
here: an empty file in the user's private folder (slot_wake.py) whose name says the
limit, the slots, the lease id and when it was granted, renewed and left. The lease stays
held on the server. A run of this machine that misses slots of that limit takes the file
over (removing it is the claim: one run wins) and holds the lease as its own, renews it
and gives it back like any other. A lease nobody took within LINGER_SECONDS is taken back
by the run that left it and given back to the server.

The server's count never falls below what the machine's runs use: the lease is held on
the server the whole time, and used by one run at a time. What this costs the other
machines' runs: slots left here are held LINGER_SECONDS longer, and a lease passes from
run to run here only while it is younger than HANDOVER_SECONDS; then it goes back to the
server, where any run may ask for it.

A run that dies after leaving a lease leaves its file: nobody takes a file older than
ADOPT_WITHIN_SECONDS (its lease runs out on the server by itself, as a dead run's do),
and the next look removes it when its process is gone. The folder is private to the
user (0700, checked); its files are trusted as the user's own runs', as the runs' Prefect
API key is. PLANFLOW_SLOT_WAKE=false turns it off with the wake-ups (every lease goes
back to the server).

    spare = deposit(limit, slots, lease_id, born, renewed)   # None: give it back yourself
    leases = adopt(limit, most=1000)                          # these are yours now
    if reclaim(spare): release(spare.lease_id)                # nobody took it
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from planflow.runtime.slot_wake import announce_spare, private_subfolder

LINGER_SECONDS = 0.5  # a lease left here waits this long to be taken over, then goes back to the server
HANDOVER_SECONDS = 10.0  # a lease older than this (since granted) goes back to the server, not here
ADOPT_WITHIN_SECONDS = 2 * LINGER_SECONDS  # a file left longer ago is its runner's to take back: never taken over
SUFFIX = ".lease"
_SEP = "~"


@dataclass(frozen=True)
class Spare:
    """A lease left to be taken over: its limit, slots and id, when the server granted it,
    when it was last renewed, when it was left (wall clock) and by which process."""

    limit: str
    slots: int
    lease_id: UUID
    born: float
    renewed: float
    left: float
    pid: int

    @property
    def file_name(self) -> str:
        times = f"{self.born:.3f}{_SEP}{self.renewed:.3f}{_SEP}{self.left:.3f}"
        return f"{self.limit}{_SEP}{self.slots}{_SEP}{times}{_SEP}{self.pid}{_SEP}{self.lease_id}{SUFFIX}"


def parse(name: str) -> Spare | None:
    """The Spare a file name says, None for any other name."""
    if not name.endswith(SUFFIX):
        return None
    parts = name[: -len(SUFFIX)].split(_SEP)
    if len(parts) != 7:
        return None
    try:
        limit, slots, born, renewed, left, pid, lease = parts
        return Spare(limit, int(slots), UUID(lease), float(born), float(renewed), float(left), int(pid))
    except ValueError:
        return None


def spares_folder() -> Path | None:
    """`<wake folder>/spares`, private to the user; None where leases are not handed over."""
    return private_subfolder("spares")


def deposit(limit: str, slots: int, lease_id: UUID, born: float, renewed: float, wake: bool = True) -> Spare | None:
    """Leave a lease for this machine's runs; None when it cannot be (no private folder, too
    old to hand over): the caller gives it back to the server. `wake`: tell the runs
    waiting for `limit` (announce_spare); a lease put back at once by the run that just
    took it over wakes nobody."""
    folder = spares_folder()
    now = time.time()
    if folder is None or now - born >= HANDOVER_SECONDS:
        return None
    spare = Spare(limit, slots, lease_id, born, renewed, now, os.getpid())
    try:
        os.close(os.open(folder / spare.file_name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError:
        return None
    if wake:
        announce_spare(limit)
    return spare


def adopt(limit: str, most: int) -> list[Spare]:
    """Leases of `limit` left here, taken over: each of at most `most` slots, together at
    most `most` (largest first). Each is the caller's now, to use, renew and give back."""
    folder = spares_folder()
    taken: list[Spare] = []
    if folder is None:
        return taken
    for spare in _fitting(folder, limit, most):
        if _remove(folder, spare):
            taken.append(spare)
    return taken


def coverable(limit: str, most: int) -> int:
    """Slots of `limit` that adopt(limit, most) would take over now (nothing is taken)."""
    folder = spares_folder()
    return sum(spare.slots for spare in _fitting(folder, limit, most)) if folder is not None else 0


def _fitting(folder: Path, limit: str, most: int) -> list[Spare]:
    """The leases of `limit` left here that may be taken over, largest first, as many as
    fit into `most` slots (a lease cannot be split on the server)."""
    if most <= 0:
        return []
    now = time.time()
    found = []
    try:
        entries = [entry.name for entry in os.scandir(folder) if entry.name.startswith(limit + _SEP)]
    except OSError:
        return []
    for name in entries:
        spare = parse(name)
        if spare is None or spare.limit != limit:
            continue
        if now - spare.left > ADOPT_WITHIN_SECONDS:  # its runner takes it back (or died: its lease runs out)
            if not _alive(spare.pid):
                with contextlib.suppress(OSError):
                    os.unlink(folder / name)
            continue
        found.append(spare)
    fitting = []
    for spare in sorted(found, key=lambda s: -s.slots):
        if spare.slots <= most:
            fitting.append(spare)
            most -= spare.slots
    return fitting


def reclaim(spare: Spare) -> bool:
    """Take back a lease this process left: True when nobody took it over (give it back to
    the server), False when a run did (it is that run's now)."""
    folder = spares_folder()
    return folder is not None and _remove(folder, spare)


def _remove(folder: Path, spare: Spare) -> bool:
    try:
        os.unlink(folder / spare.file_name)
    except FileNotFoundError:  # another run took it first
        return False
    except OSError:
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
