"""Reads kept in a process while the Prefect server's events say that nothing they come from changed.

A run reads the ResourcePool and PlannerSettings blocks before its plan: one request, yet
the costliest of its early reads on the server (20-35 ms of its CPU, beside the flow run's
own creation, which waits behind it). Blocks change when someone runs `planflow pools set`
or edits one in the UI, not between two runs; and the server says when they do: it emits
`prefect.block-document.created|updated|deleted` for every change of a named block.

So a process that reads the blocks more than once keeps one subscription to those events
(`EventWatch`, on a daemon thread of its own, Prefect's own PrefectEventSubscriber) and
a read taken while the subscription was live (`KeptRead`) stands until an event comes:

- it is kept only if no event came while it was read, and the subscription was live
  (connected for LIVE_AFTER_SECONDS: the server registers a subscription a little after
  the client sent its filter) from before the read started to after it ended;
- any event of the watched kinds drops it (the next call reads again), and so does the
  subscription's loss (a disconnect, a server restart): nothing is kept while it is down;
- a change made by this process (`changed_here`, called by planflow's blocks after a
  save) drops it at once: the server streams the change's event a few milliseconds
  after its request returned, and a run started in between would plan with the old;
- a forked child does not inherit the parent's watch (its thread is not there): it
  starts its own.

A process that reads once (a deployment's run in a process of its own) subscribes to
nothing: the subscription starts at the second read, and a read is kept from the third on
(once the subscription is LIVE_AFTER_SECONDS old). A change reaches a process's kept
read as soon as the server streams its event (milliseconds on a local server); a run
that starts in that moment plans with the blocks as they were just before, as a run
that started a moment earlier would (the pools' concurrency limits, which hold the
capacity across runs, are read fresh each run). PLANFLOW_KEEP_READS=false turns it off.

    blocks = KeptRead(read_documents, prefixes=("prefect.block-document.",))
    rows = blocks()     # a request the first time, then the kept rows until a block changes
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from prefect.events.clients import PrefectEventSubscriber
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.settings import PREFECT_API_URL

from planflow.settings import settings

logger = logging.getLogger("planflow.event_watch")
T = TypeVar("T")
LIVE_AFTER_SECONDS = 1.0  # a subscription is trusted this long after it connected (see the module's doc)
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)  # the waits before each new connection after a loss (then the last)
GIVE_UP_AFTER = 20  # failed connections in a row after which the watch ends (its server is gone for good)


class EventWatch:
    """One subscription to the events of one Prefect server whose names start with one of
    `prefixes`: `generation()` moves at each such event and at each loss of the
    subscription, and is None while the subscription is not live."""

    def __init__(self, api_url: str, prefixes: tuple[str, ...]) -> None:
        self.api_url, self.prefixes = api_url, prefixes
        self.pid = os.getpid()
        self.events = 0  # the watched events seen (for tests and logs)
        self._lock = threading.Lock()
        self._generation = 0
        self._live_since: float | None = None  # monotonic time of the connection, None while down
        self._ended = threading.Event()
        context = contextvars.copy_context()  # the caller's Prefect settings (its auth among them)
        self._thread = threading.Thread(target=context.run, args=(self._run,), name="planflow-event-watch", daemon=True)
        self._thread.start()

    def generation(self) -> int | None:
        """The count of changes seen so far; None while the subscription is not live (or
        younger than LIVE_AFTER_SECONDS, or the watch has ended)."""
        with self._lock:
            live = self._live_since is not None and time.monotonic() - self._live_since >= LIVE_AFTER_SECONDS
            return self._generation if live and not self._ended.is_set() else None

    @property
    def alive(self) -> bool:
        """Its thread runs (it ends only after GIVE_UP_AFTER failed connections in a row)."""
        return not self._ended.is_set() and os.getpid() == self.pid

    def _changed(self, live_since: float | None = None, connected: bool = True) -> None:
        with self._lock:
            self._generation += 1
            self._live_since = live_since if connected else None

    def _run(self) -> None:
        try:
            asyncio.run(self._watch())
        except Exception as exc:  # a kept read is only a saving: the reads go to the server again
            logger.debug("event watch of %s ended: %s", self.api_url, exc)
        finally:
            self._changed(connected=False)
            self._ended.set()

    async def _watch(self) -> None:
        failures = 0
        while failures < GIVE_UP_AFTER:
            try:
                subscriber = PrefectEventSubscriber(
                    api_url=self.api_url,
                    filter=EventFilter(event=EventNameFilter(prefix=list(self.prefixes))),
                    reconnection_attempts=0,  # a loss is seen here (it drops what is kept), not retried inside
                )
                async with subscriber:
                    self._changed(live_since=time.monotonic())
                    failures = 0
                    async for event in subscriber:
                        self.events += 1
                        logger.debug("event %s: the reads kept from it are read again", event.event)
                        self._changed(live_since=self._live_since)
            except Exception as exc:
                logger.debug("event watch of %s lost: %s", self.api_url, exc)
            self._changed(connected=False)
            failures += 1
            await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1])


_here = [0]  # changes made by this process (changed_here), counted
_watches: dict[tuple[str, tuple[str, ...]], EventWatch] = {}
_watches_lock = threading.Lock()


def watch(prefixes: tuple[str, ...]) -> EventWatch | None:
    """This process's watch of the current Prefect server's events named `prefixes`,
    started on first use (None when keeping reads is off or no API URL is set)."""
    api_url = PREFECT_API_URL.value()
    if not api_url or not settings().keep_reads:
        return None
    key = (str(api_url), prefixes)
    with _watches_lock:
        found = _watches.get(key)
        if found is None or not found.alive:  # a new server, a forked child, or a watch that gave up
            found = _watches[key] = EventWatch(str(api_url), prefixes)
        return found


def changed_here() -> None:
    """This process changed something that kept reads come from: they are read again."""
    with _watches_lock:
        _here[0] += 1


def _changes_here() -> int:
    with _watches_lock:
        return _here[0]


class KeptRead(Generic[T]):
    """`read()`, kept while `prefixes`' events say nothing changed (see the module's doc).
    What it returns is shared by the calls that take it from here: callers must not change
    it (keep raw rows, parse them per call)."""

    def __init__(self, read: Callable[[], T], prefixes: tuple[str, ...]) -> None:
        self._read, self.prefixes = read, prefixes
        self._lock = threading.Lock()
        self._kept: tuple[EventWatch, tuple[int, int], T] | None = None
        self.requests = 0  # the reads that went to the server (for tests and benchmarks)

    def __call__(self) -> T:
        watching = watch(self.prefixes) if self.requests else None  # a process that reads once watches nothing
        before = self._generation(watching)
        with self._lock:
            kept = self._kept
        if kept is not None and before is not None and kept[0] is watching and kept[1] == before:
            return kept[2]
        value = self._read()
        self.requests += 1
        after = self._generation(watching)
        steady = watching is not None and before is not None and after == before
        with self._lock:  # kept only when the watch was live throughout and saw nothing meanwhile
            self._kept = (watching, before, value) if steady else None  # type: ignore[assignment]
        return value

    @staticmethod
    def _generation(watching: EventWatch | None) -> tuple[int, int] | None:
        seen = watching.generation() if watching is not None else None
        return None if seen is None else (seen, _changes_here())

    def forget(self) -> None:
        """The next call reads again (e.g. after this process changed what it reads)."""
        with self._lock:
            self._kept = None
