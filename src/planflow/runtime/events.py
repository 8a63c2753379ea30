"""A run's events and the reporters that subscribe to them.

A run is plan -> dispatch -> record. The runner announces what happens: the run was
planned, each step started, completed, failed or was skipped, the run finished. Reporters
(artifacts, progress, metrics, logs, the terminal's progress bar) subscribe to those
events; none of them is called by the dispatcher itself.

Events are delivered in the order they happened, on one thread per run (the EventBus),
so that the dispatcher never waits for an artifact upload, a metrics push or a terminal.
Each step event carries a copy of the step's record as it was at that moment. Every
reporter is asked to `flush()` when no event is waiting and at least FLUSH_SECONDS
passed since the last flush, and once more at the end of the run: a reporter that sends
over the network (progress artifact, metrics push) batches there, so a run of many short
steps sends a few updates a second rather than one per event.

A reporter is an observer: when one raises, the run goes on, the error is logged (the
first one with its traceback) and the reporter keeps receiving the events that follow.

    >>> class Printer(Reporter):
    ...     def on_step(self, event: StepEvent) -> None:
    ...         print(event.kind, event.record.step)
    >>> remove = subscribe(Printer())      # every run in this process, until remove()
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

from planflow.core.pipeline import Pipeline
from planflow.runtime.dispatch import StepRecord
from planflow.runtime.planning import RunPlan

STEP_EVENTS = ("started", "completed", "failed", "skipped")
FINAL_STEP_EVENTS = ("completed", "failed", "skipped")
DRAIN_TIMEOUT_SECONDS = 120.0  # what a run waits, at its end, for its reporters
FLUSH_SECONDS = 1.0  # the most a batched update (progress, metrics) lags behind the run
PLANNED_HOLD_SECONDS = 1.0  # the most `on_planned` waits for the run's first step event


@dataclass(frozen=True)
class RunInfo:
    """What every event of one run shares: the pipeline, its parameters, how it runs."""

    pipeline: Pipeline
    params: Mapping[str, Any]
    policy: str
    mode: str
    flow_run_id: str | None
    plan: RunPlan


@dataclass(frozen=True)
class StepEvent:
    """A step started, completed, failed or was skipped (`kind`); `at` is the Unix time."""

    kind: str
    record: StepRecord
    run: RunInfo
    at: float = field(default_factory=time.time)


class Reporter:
    """Receives one run's events; override what you need. Called on the run's
    reporting thread, one event at a time, in order (at the run's end, `on_finished`
    and the last `flush` on a thread of its own, beside the other reporters')."""

    def on_planned(self, run: RunInfo) -> None:
        """The run is planned (pools, assignments, the plan under policy "plan")."""

    def on_step(self, event: StepEvent) -> None:
        """A step started, completed, failed or was skipped."""

    def on_finished(self, run: RunInfo, records: Mapping[str, StepRecord]) -> None:
        """Every step is done (completed, failed or skipped); `records` by step name."""

    def flush(self) -> None:
        """No event is waiting: send what was batched."""

    @property
    def name(self) -> str:
        return type(self).__name__


Listener = Callable[[str, StepRecord], None]


class ListenerReporter(Reporter):
    """A plain function `(event, record)` as a reporter of step events."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def on_step(self, event: StepEvent) -> None:
        self.listener(event.kind, event.record)

    @property
    def name(self) -> str:
        return f"listener {getattr(self.listener, '__qualname__', repr(self.listener))}"


_subscribers: list[Reporter] = []
_subscribers_lock = threading.Lock()


def subscribe(reporter: Reporter) -> Callable[[], None]:
    """Give `reporter` the events of every run started in this process from now on;
    returns a function that unsubscribes it."""
    with _subscribers_lock:
        _subscribers.append(reporter)

    def unsubscribe() -> None:
        with _subscribers_lock:
            if reporter in _subscribers:
                _subscribers.remove(reporter)

    return unsubscribe


def add_listener(listener: Listener) -> Callable[[], None]:
    """Receive (event, record) for every step event of runs in this process;
    returns a function that removes the listener."""
    return subscribe(ListenerReporter(listener))


def subscribers() -> list[Reporter]:
    """The reporters subscribed now (a run takes this list when it starts)."""
    with _subscribers_lock:
        return list(_subscribers)


class EventBus:
    """Delivers one run's events to its reporters, in order, on a thread of its own.

    Use it as a context manager: leaving it waits (at most `drain_timeout` seconds) until
    every event was delivered and flushed, so a run's artifacts and metrics exist when
    the run returns. Or `end` it and `close` it later: the runner ends it with the run's
    steps and closes it in the flow's final-state hook (run_end.py). The thread runs in a
    copy of the caller's context, so Prefect's run context (artifacts link to the flow
    run, the run logger) holds there too."""

    def __init__(
        self,
        reporters: Iterable[Reporter],
        logger: logging.Logger | logging.LoggerAdapter,
        drain_timeout: float = DRAIN_TIMEOUT_SECONDS,
        flush_seconds: float = FLUSH_SECONDS,
        hold_end: bool = False,
    ) -> None:
        """`hold_end`: `on_finished` reaches the reporters once `close` is called, or after
        `drain_timeout` if it never is (the runner closes in the flow's final-state hook:
        the run's end artifacts then follow its final state instead of competing with it
        on the server)."""
        if not flush_seconds >= 0:
            raise ValueError(f"flush_seconds={flush_seconds!r}: must be a number of seconds >= 0 (e.g. 1.0)")
        self.reporters = list(reporters)
        self.logger = logger
        self.drain_timeout = drain_timeout
        self.flush_seconds = flush_seconds
        self.planned_hold = PLANNED_HOLD_SECONDS
        self.failures: Counter[str] = Counter()
        self._queue: queue.SimpleQueue[tuple[str, tuple[Any, ...]] | tuple[()] | None] = queue.SimpleQueue()
        self._busy: tuple[str, str] | None = None  # (reporter, method) being called now
        self._pool: ThreadPoolExecutor | None = None  # calls the reporters side by side (_side_by_side)
        self._ended = False  # `end` was called: no event after it
        self._closing = threading.Event()  # `close` was called (what `hold_end` waits for)
        self._hold_end = hold_end
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._deliver,), name="planflow-reporters", daemon=True
        )

    # -- what the runner announces ------------------------------------------------------
    def planned(self, run: RunInfo) -> None:
        self._queue.put(("on_planned", (run,)))

    def step(self, run: RunInfo, kind: str, record: StepRecord) -> None:
        """A step event; the record is copied now, as the dispatcher goes on changing it."""
        self._queue.put(("on_step", (StepEvent(kind, replace(record), run),)))

    def finished(self, run: RunInfo, records: Mapping[str, StepRecord]) -> None:
        self._queue.put(("on_finished", (run, {name: replace(r) for name, r in records.items()})))

    # -- delivery -----------------------------------------------------------------------
    def __enter__(self) -> EventBus:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def end(self) -> None:
        """No more events: the bus's thread delivers what is queued, flushes and stops, on
        its own (`close` waits for it). Idempotent."""
        if not self._ended:
            self._ended = True
            self._queue.put(None)

    def close(self) -> None:
        """Deliver what is queued, flush, and stop; bounded by `drain_timeout`."""
        self.end()
        self._closing.set()
        self._thread.join(self.drain_timeout)
        if self._thread.is_alive():
            reporter, method = self._busy or ("?", "?")
            self.logger.error(
                "planflow reporters did not finish within %g s (%s is still in %s); the run returns "
                "without them, so some artifacts or metrics of this run may be missing",
                self.drain_timeout,
                reporter,
                method,
            )
        for reporter, count in self.failures.items():
            self.logger.warning("reporter %s failed on %d event(s) of this run (the run went on)", reporter, count)

    def _deliver(self) -> None:
        flushed, dirty, ended = time.monotonic(), False, False
        planned: tuple[str, tuple[Any, ...]] | None = None  # held until the first step event, or held_until
        held_until = 0.0
        while True:
            due = flushed + self.flush_seconds if planned is None else held_until  # no flush before the plan
            try:  # nothing waiting: sleep until the next event or until a flush is due
                item = self._queue.get(timeout=max(0.0, due - time.monotonic())) if dirty else self._queue.get()
            except queue.Empty:
                item = ()
            if planned is not None and (item != () or time.monotonic() >= held_until):
                self._side_by_side(*planned)  # the plan's artifacts and entries, before any step event
                planned = None
            if item and item[0] == "on_planned" and self.planned_hold > 0:
                # Held (at most planned_hold s) until the run's first step event, which comes
                # once the dispatcher released its first step: the plan's artifacts (requests,
                # a picture to draw) no longer compete with that step's slots on the server.
                planned, held_until, dirty = item, time.monotonic() + self.planned_hold, True
                continue
            if item is None:
                if dirty or not ended:  # the end's flush came with on_finished
                    self._side_by_side("flush", ())
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                return
            if item and item[0] == "on_finished":  # the run's end: every reporter side by side
                if self._hold_end:
                    self._busy = ("the bus", "waiting for close (hold_end)")
                    self._closing.wait(self.drain_timeout)
                self._finish_all(item[1])
                flushed, dirty, ended = time.monotonic(), False, True
            elif item and item[0] == "on_planned":  # artifacts and entries: requests, side by side
                self._side_by_side(*item)
                dirty = True
            elif item:
                method, args = item
                self._call_all(method, args)
                dirty = True
            if dirty and planned is None and self._queue.empty() and time.monotonic() >= due:
                self._side_by_side("flush", ())
                flushed, dirty = time.monotonic(), False

    def _finish_all(self, args: tuple[Any, ...]) -> None:
        """`on_finished` then `flush` for each reporter, the reporters side by side: the
        run's end waits for the slowest (an artifact upload, the calendar entry's delete,
        a server retry after a busy database), not for the sum of them. Each reporter
        still hears its calls one at a time and in order."""

        def finish(reporter: Reporter) -> None:
            self._call_all("on_finished", args, [reporter])
            self._call_all("flush", (), [reporter])

        self._busy = ("every reporter", "on_finished")
        with ThreadPoolExecutor(max_workers=len(self.reporters) or 1, thread_name_prefix="planflow-finish") as pool:
            for reporter in self.reporters:
                pool.submit(contextvars.copy_context().run, finish, reporter)

    def _side_by_side(self, method: str, args: tuple[Any, ...]) -> None:
        """`method` of every reporter, the reporters side by side (each a request or a few:
        a run's plan artifacts, its progress and history writes); returns when all did, so
        each reporter still hears its calls one at a time and in order. On the bus's thread,
        one after another, they held up the events behind them, and the run's end with them."""
        if len(self.reporters) <= 1:
            self._call_all(method, args)
            return
        if self._pool is None:  # the bus's own, for the run: no threads started per flush
            self._pool = ThreadPoolExecutor(max_workers=len(self.reporters), thread_name_prefix="planflow-report")
        calls = [
            self._pool.submit(contextvars.copy_context().run, self._call_all, method, args, [reporter])
            for reporter in self.reporters
        ]
        wait(calls)
        self._busy = None

    def _call_all(self, method: str, args: tuple[Any, ...], reporters: list[Reporter] | None = None) -> None:
        for reporter in self.reporters if reporters is None else reporters:
            self._busy = (reporter.name, method)
            try:
                getattr(reporter, method)(*args)
            except Exception as exc:  # an observer never fails the run
                self.failures[reporter.name] += 1
                if self.failures[reporter.name] == 1:
                    self.logger.warning(
                        "reporter %s failed in %s: %s: %s (the run goes on)",
                        reporter.name,
                        method,
                        type(exc).__name__,
                        exc,
                        exc_info=True,
                    )
        self._busy = None
