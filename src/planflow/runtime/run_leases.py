"""The leases one run holds on the Prefect server for its steps' shared slots (run_slots.py).

RunSlots decides what a step takes; this half keeps what was taken. A lease is shared
out to steps (`_gather`, `_use`, `_give_back`), and a lease no step uses is given back:

- first left for this machine's other runs (`_leave_here`, spare_leases.py), which take
  it over without a request (`_adopt`); one nobody took within LINGER_SECONDS goes back
  to the server on the releaser's thread (`_take_back_left`);
- to the server side by side (`_release_all`), off the dispatcher's path (`_releaser`);
- at once, to the server, when a refused step must hold nothing (`_drop`, `_undo`).

Leases are renewed by one thread for the whole run (`_renewer`), each when half its
time is up. New leases come from `_increment` (one request to the server).

    class RunSlots(RunLeases, SharedSlots): ...
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client

from planflow.prefect.limits import parse_limit_name
from planflow.runtime import spare_leases
from planflow.runtime.admission import LOCKED, _release
from planflow.runtime.dispatch import RESOURCES
from planflow.runtime.slot_wake import SlotWake, announce_taken

logger = logging.getLogger("planflow.admission")
CLOSE_SECONDS = 30.0  # the most a run's end waits for its leases to be given back
TOO_MANY = 422  # the server's answer to more slots than the limit has at all
LOOK_AGAIN = "look again"  # put on the releaser's queue: a lease was left here, due back later


@dataclass
class Lease:
    """One lease on the server: its slots of one limit, how many no step uses (`free`),
    how many steps share it, when it was renewed (monotonic) and granted (wall clock; 0:
    unknown, never handed over)."""

    id: UUID
    limit: str
    slots: int
    free: int
    users: int = 0
    renewed: float = 0.0
    born: float = 0.0


class RunLeases:
    """The leases of one run (a base of RunSlots, which sets `lease` and `log`)."""

    lease: float
    log: logging.Logger | logging.LoggerAdapter

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._leases: list[Lease] = []
        self._lock = threading.Lock()
        self._releases: queue.SimpleQueue[Lease | str | None] = queue.SimpleQueue()
        self._stop = threading.Event()  # the run ended: the renewer stops
        self._client: Any = None  # the dispatcher thread's client while the run lasts
        self._threads_pool = ThreadPoolExecutor(max_workers=len(RESOURCES), thread_name_prefix="planflow-slot-take")
        self._wake: SlotWake | None = None
        self.requests = 0  # increments sent (for tests and the overhead benchmark)
        self.refusals = 0  # increments the server refused (423: not enough free; 422: more than the limit)
        self.handed_over = 0  # leases taken over from this machine's other runs, not asked for (spare_leases.py)
        self._hands_over = False  # leases given back are left here first (while the run hears this machine's runs)
        self._left: list[spare_leases.Spare] = []  # leases this run left here, not yet taken back or over
        self._refused_at: dict[str, float] = {}  # limit name -> when it last refused this run (_contended)
        # limit name -> when (wall clock) it last changed as far as this run knows: a give-back
        # heard on this machine, or this run's own grant or refusal; a read begun before is stale
        self._changed_at: dict[str, float] = {}

    def _gather(self, name: str, n: int) -> list[tuple[Lease, int]]:
        """Up to `n` slots of limit `name` from the run's leases' free slots, as shares
        (fullest lease first, so that a small step leaves the others whole)."""
        shares = []
        with self._lock:
            for lease in sorted(self._leases, key=lambda lease: -lease.free):
                if n <= 0:
                    break
                if lease.limit == name and lease.free > 0:
                    k = min(n, lease.free)
                    lease.free -= k
                    lease.users += 1
                    shares.append((lease, k))
                    n -= k
        return shares

    def _use(self, lease: Lease, n: int) -> tuple[Lease, int]:
        with self._lock:
            lease.free -= n
            lease.users += 1
        return lease, n

    def _give_back(self, shares: list[tuple[Lease, int]]) -> None:
        with self._lock:
            for lease, n in shares:
                lease.free += n
                lease.users -= 1

    def _give_back_idle(self, names: Iterable[str], here: bool = True) -> None:
        """A step refused its missing slots gives back the run's idle leases of those limits
        (no step uses them): a run must not hold part of what it waits for, or two runs that
        each hold one core and wait for a second wait for each other for ever. `here`: as
        _release_all's (False: all to the server, none left for this machine's runs)."""
        names = set(names)
        with self._lock:
            idle = [lease for lease in self._leases if lease.users == 0 and lease.limit in names]
            for lease in idle:
                self._leases.remove(lease)
        self._release_all(idle, here=here)  # before it returns, like _drop: the step waits holding nothing

    def _drop(self, leases: list[Lease], here: bool = True, wake: bool = True) -> None:
        """Give back `leases` now (before it returns: a refused step holds nothing when it
        waits). `here`: those that can be are left for this machine's other runs (and those
        waiting for them woken: `wake`), else all go back to the server."""
        with self._lock:
            for lease in leases:
                self._leases.remove(lease)
        self._release_all(leases, here=here, wake=wake)

    def _undo(self, taken: list[Lease], adopted: list[Lease]) -> None:
        """A step refused part of its slots: what the server granted it goes back there, what
        it took over here is left here again (waking nobody: nothing came free)."""
        self._drop(taken, here=False)
        self._drop(adopted, wake=False)

    def _drop_later(self, lease: Lease) -> None:
        """Give back `lease` on the releaser's thread (nothing waits for it)."""
        with self._lock:
            self._leases.remove(lease)
        self._releases.put(lease)

    def _release_all(
        self, leases: list[Lease], warn_when: str | None = None, here: bool = True, wake: bool = True
    ) -> None:
        """Give back `leases`: unless not `here`, those that can be handed over are left for
        this machine's other runs (_leave_here; `wake` them), the others go to the server
        side by side (a request each; one after another, a handover to another run waited
        for the sum: 20-200 ms each on a busy SQLite server). `warn_when`: a give-back
        that fails is logged (saying when it was) and the others go on, instead of
        raising; its lease runs out by itself."""

        if here:
            leases = self._leave_here(leases, wake=wake)

        def settle(call: Callable[[], Any]) -> None:
            try:
                call()
            except Exception as exc:
                if warn_when is None:
                    raise
                logger.warning("a lease was not given back %s (%s); its slots return when it runs out", warn_when, exc)

        if len(leases) <= 1:
            for lease in leases:
                settle(lambda lease=lease: _release(lease.id, lease.limit, lease.slots))
            return
        given = []
        for i, lease in enumerate(leases):
            try:
                given.append(
                    self._threads_pool.submit(
                        contextvars.copy_context().run, _release, lease.id, lease.limit, lease.slots
                    )
                )
            except RuntimeError:  # its threads were shut down (the run's end): the rest one by one, here
                for rest in leases[i:]:
                    settle(lambda rest=rest: _release(rest.id, rest.limit, rest.slots))
                break
        for future in given:  # each request is bounded by the client's timeout; this wait too
            settle(lambda future=future: future.result(CLOSE_SECONDS))

    def _leave_here(self, leases: list[Lease], wake: bool = True) -> list[Lease]:
        """Leave the leases of a pool's resources young enough to be handed over for this
        machine's other runs (spare_leases.py); the others, to give back to the server.
        `wake`: tell the runs waiting for them (a lease put back at once by the step that
        took it over, refused the rest of its slots, wakes nobody)."""
        if not self._hands_over:
            return leases
        rest = []
        for lease in leases:
            left = None
            if lease.born and parse_limit_name(lease.limit) is not None:
                renewed = time.time() - (time.monotonic() - lease.renewed)
                left = spare_leases.deposit(lease.limit, lease.slots, lease.id, lease.born, renewed, wake=wake)
            if left is None:
                rest.append(lease)
            else:
                with self._lock:
                    self._left.append(left)
                self._releases.put(LOOK_AGAIN)  # the releaser takes it back when due
        return rest

    def _take_back_left(self, everything: bool = False) -> None:
        """Give back to the server the leases this run left here LINGER_SECONDS ago (all of
        them: `everything`) that no other run took over."""
        now = time.time()
        with self._lock:
            due = [s for s in self._left if everything or now - s.left >= spare_leases.LINGER_SECONDS]
            self._left = [s for s in self._left if s not in due]
        unused = [Lease(s.lease_id, s.limit, s.slots, s.slots) for s in due if spare_leases.reclaim(s)]
        self._release_all(unused, warn_when="after nobody took it over", here=False)

    def _next_take_back(self) -> float | None:
        """Seconds until the first lease this run left here is due back (None: none left)."""
        with self._lock:
            first = min((s.left for s in self._left), default=None)
        return None if first is None else max(0.0, first + spare_leases.LINGER_SECONDS - time.time())

    def _coverable(self, name: str, most: int) -> int:
        """Slots of limit `name`, at most `most`, that leases this machine's other runs left would cover now."""
        return spare_leases.coverable(name, most) if self._hands_over and most > 0 else 0

    def _adopt(self, name: str, most: int) -> list[Lease]:
        """Leases of limit `name` this machine's other runs left (spare_leases.py), at most
        `most` slots, taken over as the run's own (all free): no request."""
        if not self._hands_over or most <= 0:
            return []
        spares = spare_leases.adopt(name, most)
        if not spares:
            return []
        now, clock = time.time(), time.monotonic()
        leases = [
            Lease(s.lease_id, name, s.slots, s.slots, renewed=clock - (now - s.renewed), born=s.born) for s in spares
        ]
        with self._lock:
            self._leases += leases
            self.handed_over += len(leases)
        return leases

    def _increment(self, name: str, n: int, quiet: bool = False, own_client: bool = False) -> Lease | None:
        """A new lease of `n` slots of limit `name`; None when the limit does not exist.
        `quiet`: a refusal or a server error is left for `take` to meet and report;
        `own_client`: not the dispatcher thread's client (called from another thread)."""
        with self._lock:
            self.requests += 1
        try:
            shared = self._client if self._client and not own_client else None
            with nullcontext(shared) if shared else get_client(sync_client=True) as client:
                response = client.increment_concurrency_slots_with_lease(
                    names=[name], slots=n, mode="concurrency", lease_duration=self.lease
                )
        except (httpx.HTTPStatusError, httpx.TransportError) as exc:
            if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (LOCKED, TOO_MANY):
                with self._lock:
                    self.refusals += 1
                    self._refused_at[name] = time.monotonic()
                    self._changed_at[name] = time.time()  # a read that said enough was free is stale
            if quiet:
                return None
            raise
        granted = response.json()
        if not granted.get("limits"):
            return None
        lease = Lease(UUID(granted["lease_id"]), name, n, n, renewed=time.monotonic(), born=time.time())
        with self._lock:
            self._leases.append(lease)
            if not self._hears_counts():  # else this run hears its own grant, as the others do
                self._changed_at[name] = time.time()  # it holds fewer free now
        if self._wake is not None:
            announce_taken(name, n)  # this machine's runs: their reads of it, brought up to date
        return lease

    def _hears_counts(self) -> bool:
        """This run hears the grants and give-backs of this machine's runs, its own too,
        with their counts (slot_wake.py): its reads of a limit are kept up to date by them."""
        wake = self._wake
        return wake is not None and wake.path is not None

    def _releaser(self) -> None:
        while True:
            try:  # woken for the leases left here that are due back, if any
                lease = self._releases.get(timeout=self._next_take_back())
            except queue.Empty:
                self._take_back_left()
                continue
            if lease is None:
                break
            if isinstance(lease, str):  # a lease was left here: look at when it is due
                continue
            leases = [lease]  # with what was put meanwhile (a round's idle leases come together)
            while True:
                try:
                    more = self._releases.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._releases.put(None)  # the run's end: after these
                    break
                if not isinstance(more, str):
                    leases.append(more)
            try:
                self._release_all(leases, warn_when="after its step")  # the releaser goes on
                self._take_back_left()
            except Exception:  # never ends the releaser: the leases after these still go back
                logger.warning("leases were not given back after their step; they run out by themselves", exc_info=True)

    def _renewer(self) -> None:
        with get_client(sync_client=True) as client:
            while not self._stop.wait(self.lease / 4):
                with self._lock:
                    due = [lease for lease in self._leases if time.monotonic() - lease.renewed > self.lease / 2]
                for lease in due:
                    try:
                        client.renew_concurrency_lease(lease_id=lease.id, lease_duration=self.lease)
                        lease.renewed = time.monotonic()
                    except (httpx.HTTPError, RuntimeError) as exc:
                        self.log.warning("could not renew lease %s (%s); its slots may return early", lease.id, exc)
