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
  from before the read started to after it ended. Live means proven: once connected, the
  watch posts an event of its own (a probe, new at each connection: a new subscriber is
  sent the last minute's events again, the probes of earlier connections among them)
  and is live only when the server streamed it back (a server with its event stream
  off never is; a client clock more than a minute ahead of the server's passes the
  probe, which carries the client's time, yet misses the server's events: KEEP_SECONDS
  bounds what it keeps then);
- any event of the watched kinds drops it (the next call reads again), and for
  QUIET_AFTER_EVENT_SECONDS after one nothing is kept (Prefect emits a block's event
  before its transaction commits: a read in that moment can still see the old rows);
- the subscription's loss (a disconnect, a server restart) drops it: nothing is kept
  while it is down;
- it stands KEEP_SECONDS at most, whatever the events say;
- a change made by this process (`changed_here`, called by planflow's blocks after a
  save or a delete) drops it at once: the server streams the change's event a few milliseconds
  after its request returned, and a run started in between would plan with the old;
- a forked child does not inherit the parent's watch (its thread is not there): it
  starts its own.

A process that reads once (a deployment's run in a process of its own) subscribes to
nothing: the subscription starts at the second read, the third is kept (once the probe
came back) and the fourth on are taken from it.

What the subscription costs the server: with any subscriber to its event stream, it
parses every event it distributes (about 90 us each; about 130 events for a run of 40
components). A Prefect worker or `flow.serve` runner already holds such a subscription
(its cancellation observer), so a server that runs deployments pays that anyway. A change reaches a process's kept
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
import hashlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Generic, TypeVar

from prefect.client.orchestration import get_client
from prefect.context import SettingsContext
from prefect.events.clients import PrefectEventSubscriber
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.settings import PREFECT_API_URL, PREFECT_CLOUD_API_URL
from prefect.types._datetime import now

from planflow.settings import settings

logger = logging.getLogger("planflow.event_watch")
T = TypeVar("T")
PROBE = "planflow.event-watch.probe"  # the event a watch posts to prove its subscription live
PROBE_WAIT_SECONDS = 10.0  # a probe not streamed back within this: the connection is dropped and tried again
QUIET_AFTER_EVENT_SECONDS = 2.0  # nothing is kept this long after a watched event (see the module's doc)
KEEP_SECONDS = 60.0  # the longest a read is kept, whatever the events say
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)  # the waits before each new connection after a loss (then the last)
GIVE_UP_AFTER = 20  # failed connections in a row after which the watch ends (about 8 minutes)
GAVE_UP_SECONDS = 600.0  # ... and no new watch of that server is started for this long


class EventWatch:
    """One subscription to the events of one Prefect server whose names start with one of
    `prefixes`: `generation()` moves at each such event and at each loss of the
    subscription, and is None while the subscription is not proven live (or just after
    an event)."""

    def __init__(self, api_url: str, prefixes: tuple[str, ...]) -> None:
        self.api_url, self.prefixes = api_url, prefixes
        self.pid = os.getpid()
        self.events = 0  # the watched events seen (for tests and logs)
        # the resource of the probe of the current connection: a new one per connection, as a
        # new subscriber is sent the last minute's events again, an earlier connection's probe
        # among them (it proved that connection, not this one)
        self._probe = ""
        self._lock = threading.Lock()
        self._generation = 0
        self._live = False  # connected, and its probe came back
        self._last_event = -1e9  # monotonic time of the last watched event
        self._ended = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        # a context of its own holding only the caller's Prefect settings (its API URL and
        # auth): nothing else of the caller's (its client, its run) is kept alive by the thread
        found = SettingsContext.get()
        context = contextvars.Context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run, found), name="planflow-event-watch", daemon=True
        )
        self._thread.start()

    def generation(self) -> int | None:
        """The count of changes seen so far; None while the subscription is not live, for
        QUIET_AFTER_EVENT_SECONDS after an event, or once the watch has ended."""
        with self._lock:
            quiet = time.monotonic() - self._last_event >= QUIET_AFTER_EVENT_SECONDS
            return self._generation if self._live and quiet and not self._ended.is_set() else None

    @property
    def alive(self) -> bool:
        """Its thread runs in this process (not a forked child's copy, not closed, not
        given up after GIVE_UP_AFTER failed connections in a row)."""
        return not self._ended.is_set() and os.getpid() == self.pid

    def close(self) -> None:
        """Stop watching (idempotent): the subscription is closed and nothing is kept."""
        self._ended.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None and os.getpid() == self.pid:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # its loop has ended already
                pass

    def _changed(self, live: bool, event: bool = False) -> None:
        with self._lock:
            self._generation += 1
            self._live = live
            if event:
                self._last_event = time.monotonic()

    def _run(self, found: Any) -> None:
        try:
            with SettingsContext(profile=found.profile, settings=found.settings) if found else nullcontext():
                asyncio.run(self._main())
        except Exception as exc:  # a kept read is only a saving: the reads go to the server again
            logger.debug("event watch of %s ended: %s", self.api_url, exc)
        finally:
            self._ended.set()
            self._changed(live=False)

    async def _main(self) -> None:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        if self._ended.is_set():  # closed before it started
            return
        try:
            await self._watch()
        except asyncio.CancelledError:
            pass

    async def _watch(self) -> None:
        failures = 0
        while failures < GIVE_UP_AFTER and not self._ended.is_set():
            try:
                subscriber = PrefectEventSubscriber(
                    api_url=self.api_url,
                    filter=EventFilter(event=EventNameFilter(prefix=[*self.prefixes, PROBE])),
                    reconnection_attempts=0,  # a loss is seen here (it drops what is kept), not retried inside
                )
                async with subscriber:
                    self._probe = f"planflow.event-watch.{uuid.uuid4()}"
                    await self._send_probe()
                    deadline = time.monotonic() + PROBE_WAIT_SECONDS
                    events = subscriber.__aiter__()
                    while True:
                        wait = None if self._live else max(0.0, deadline - time.monotonic())
                        try:
                            event = await asyncio.wait_for(events.__anext__(), wait)
                        except StopAsyncIteration:  # the server closed it
                            break
                        except TimeoutError:  # its probe never came back: not to be trusted
                            self._not_live(failures, f"its probe did not come back within {PROBE_WAIT_SECONDS:g} s")
                            break
                        if event.event == PROBE:
                            if event.resource.id == self._probe and not self._live:
                                self._changed(live=True)
                                failures = 0
                            continue
                        self.events += 1
                        logger.debug("event %s: the reads kept from it are read again", event.event)
                        self._changed(live=self._live, event=True)
            except Exception as exc:
                self._not_live(failures, f"{type(exc).__name__}: {exc}")
            self._changed(live=False)
            failures += 1
            await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1])

    def _not_live(self, failures: int, why: str) -> None:
        """Say why the subscription is not (or no longer) trusted: the first time in a row
        at INFO (the blocks are read at every run meanwhile), the retries at DEBUG."""
        level = logging.INFO if failures == 0 else logging.DEBUG
        logger.log(level, "event watch of %s not live (%s): reads go to the server until it is", self.api_url, why)

    async def _send_probe(self) -> None:
        """Post this watch's probe: streamed back, it proves the subscription live."""
        probe = {
            "id": str(uuid.uuid4()),
            "occurred": now("UTC").isoformat(),
            "event": PROBE,
            "resource": {"prefect.resource.id": self._probe},
        }
        async with get_client() as client:
            await client.request("POST", "/events", json=[probe])


_here = [0]  # changes made by this process (changed_here), counted
_watches: dict[tuple[str, str, tuple[str, ...]], EventWatch] = {}
_gave_up: dict[tuple[str, str, tuple[str, ...]], float] = {}  # key -> when its watch gave up (monotonic)
_watches_lock = threading.Lock()
_kept_reads: weakref.WeakSet[KeptRead[Any]] = weakref.WeakSet()  # for _after_fork_in_child


def _after_fork_in_child() -> None:
    """A forked child starts with no watch, and with new locks: one held by another thread
    of the parent at the fork would be held for ever in the child (only the forking
    thread goes on there)."""
    global _watches_lock
    _watches_lock = threading.Lock()
    _watches.clear()
    for kept in list(_kept_reads):
        kept._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def watch(prefixes: tuple[str, ...]) -> EventWatch | None:
    """This process's watch of the current Prefect server's events named `prefixes`,
    started on first use (None when keeping reads is off, no API URL is set, the API is
    Prefect Cloud's, or a watch of that server gave up within GAVE_UP_SECONDS). A watch of
    another server (or the same with other credentials) is closed when this one starts."""
    api_url = PREFECT_API_URL.value()
    if not api_url or not settings().keep_reads or str(api_url).startswith(str(PREFECT_CLOUD_API_URL.value())):
        return None  # Prefect Cloud streams events to its own subscriber, with the API key: not watched
    context = SettingsContext.get()
    auth = context.settings.api.auth_string if context else None
    secret = auth.get_secret_value() if auth is not None else ""
    key = (str(api_url), hashlib.sha256(secret.encode()).hexdigest(), prefixes)
    with _watches_lock:
        found = _watches.get(key)
        if found is not None and found.alive:
            return found
        if found is not None and os.getpid() == found.pid:  # it ended here: given up
            _gave_up[key] = time.monotonic()
            del _watches[key]
        if time.monotonic() - _gave_up.get(key, -1e9) < GAVE_UP_SECONDS:
            return None
        for other in [k for k in _watches if k[2] == prefixes]:
            _watches.pop(other).close()
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
    """`read()`, kept while `prefixes`' events say nothing changed, KEEP_SECONDS at most
    (see the module's doc). What it returns is shared by the calls that take it from here:
    callers must not change it (keep raw rows, parse them per call)."""

    def __init__(self, read: Callable[[], T], prefixes: tuple[str, ...]) -> None:
        self._read, self.prefixes = read, prefixes
        self._lock = threading.Lock()
        self._kept: tuple[EventWatch, tuple[int, int], float, T] | None = None
        self.requests = 0  # the reads that went to the server (for tests and benchmarks)
        _kept_reads.add(self)

    def __call__(self) -> T:
        watching = watch(self.prefixes) if self.requests else None  # a process that reads once watches nothing
        before = self._generation(watching)
        with self._lock:
            kept = self._kept
        fresh = kept is not None and time.monotonic() - kept[2] < KEEP_SECONDS
        if fresh and before is not None and kept[0] is watching and kept[1] == before:  # type: ignore[index]
            return kept[3]  # type: ignore[index]
        started = time.monotonic()
        value = self._read()
        after = self._generation(watching)
        steady = watching is not None and before is not None and after == before
        with self._lock:  # kept only when the watch was live throughout and saw nothing meanwhile
            self.requests += 1
            self._kept = (watching, before, started, value) if steady else None  # type: ignore[assignment]
        return value

    @staticmethod
    def _generation(watching: EventWatch | None) -> tuple[int, int] | None:
        seen = watching.generation() if watching is not None else None
        return None if seen is None else (seen, _changes_here())
