"""The reads a run makes before its plan, started when its flow is called.

A call of a pipeline's flow (flow.PipelineFlow) starts, on threads of their own, the
reads of the run that need no flow run: the pools and the settings (one request), the
concurrency limits, how late earlier runs finished, the components' history and, when the
run shares its pools, the planning slot and the calendar read under it. They are served
while Prefect creates the flow run and sets it Running (five requests, about 0.1 s on a
quiet server, which the reads used to wait behind: the slot and the calendar, one after
the other, were 60 of the 110 ms between a run's body and its first component). The run's
body (run_reads.read_for_run) takes them from here instead of reading them again. The
planning slot is held that much longer (other runs plan one at a time); a call whose run
never takes it (refused before its body) gives it back on its way out.

A run that no call started (a deployment's, run by a worker) reads everything in its
body, as before, and so does a retry of a called run: the early reads are taken once.

    with early_reads(pipeline, policy="plan"):
        ... the flow's call: its body calls take(pipeline) once ...
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

from prefect.context import SyncClientContext

from planflow.core.pipeline import Pipeline
from planflow.prefect.blocks.planner_settings import PlannerSettings
from planflow.prefect.blocks.registry import RunBlocks, read_run_blocks
from planflow.prefect.calendar_store import CalendarEntry
from planflow.prefect.limits import read_limits
from planflow.runtime.calendar import locked_calendar
from planflow.runtime.eta_history import read_ratios_or_none
from planflow.runtime.history import read_history, read_once
from planflow.settings import settings


@dataclass
class EarlyReads:
    """The reads started for one call of `pipeline`'s flow (None: not started, as the run
    will not need it). `history_store` is the `read_once` store the history read fills;
    `locked`: the planning slot taken, and the calendar read under it when
    `calendar_read` (calendar.locked_calendar), which whoever takes the reads gives back."""

    pipeline: Pipeline
    locked: Future[tuple[ExitStack | None, list[CalendarEntry] | None]] | None
    calendar_read: bool
    blocks: Future[RunBlocks]
    limits: Future[Mapping[str, Any]] | None
    ratios: Future[dict[str, list[float]] | None] | None
    history: Future[Any] | None
    history_store: dict[str, Any] = field(default_factory=dict)
    ratios_pool: str | None = None  # the pool the ratios were read for by key (None: every pool's)
    _taken: bool = False
    _lock: Lock = field(default_factory=Lock)

    def take(self) -> bool:
        """True the first time only: the first attempt of the run takes the reads."""
        with self._lock:
            taken, self._taken = self._taken, True
        return not taken


_EARLY: ContextVar[EarlyReads | None] = ContextVar("planflow_early_reads", default=None)


def _read_history(pipeline: Pipeline, store: dict[str, Any]) -> None:
    with read_once(store):
        read_history(pipeline, PlannerSettings().history_runs)


@contextmanager
def early_reads(pipeline: Pipeline, policy: str = "plan", pool: str | None = None) -> Iterator[None]:
    """Within: the reads of a run of `pipeline` under `policy` are under way, for the run's
    body to take (take); `pool`: the run's main pool when known before its plan (an
    in-process run's local pool), whose ETA ratios are then read by key. One Prefect
    client serves them and the call (the flow engine takes the client of its context).
    On the way out the reads have ended: none is left running after the call, whether its
    run took them or not (a run refused before its body, e.g. for a bad parameter, leaves
    them untaken; their errors then go with them)."""
    shared, planned = settings().shared_slots, policy == "plan"
    store: dict[str, Any] = {}
    fresh = SyncClientContext.get() is None  # a new client: it asks for a CSRF token first
    with SyncClientContext.get_or_create():
        threads = ThreadPoolExecutor(max_workers=5, thread_name_prefix="planflow-early")

        def submit(fn: Callable[..., Any], *args: Any) -> Future[Any]:
            return threads.submit(contextvars.copy_context().run, fn, *args)

        try:
            # A new Prefect client settles its CSRF state on its first request (a token, or
            # none when the server has CSRF protection off); the reads started side by side
            # each asked for a token of their own, and so did the flow engine: six requests
            # for one answer. The limits (the cheapest read) go first, alone.
            limits = (here if fresh else submit)(read_limits) if shared else None
            reads = EarlyReads(
                pipeline,
                locked=submit(locked_calendar, planned) if shared else None,  # the longest chain
                calendar_read=planned,
                blocks=submit(read_run_blocks),
                limits=limits,
                ratios=submit(read_ratios_or_none, pool, pipeline.name) if shared else None,
                history=submit(_read_history, pipeline, store) if planned else None,
                history_store=store,
                ratios_pool=pool,
            )
            token = _EARLY.set(reads)
            try:
                yield
            finally:
                _EARLY.reset(token)
        finally:
            threads.shutdown(wait=True)
        if reads.take():  # no run took them: the planning slot goes back
            release_untaken(reads.locked)


def here(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """`fn(*args)` called now, on this thread, as a finished future (its error kept for
    whoever takes the result, as a thread's would be)."""
    done: Future[Any] = Future()
    try:
        done.set_result(fn(*args))
    except Exception as exc:
        done.set_exception(exc)
    return done


def release_untaken(locked: Future[tuple[ExitStack | None, Any]] | None) -> None:
    """Give back the planning slot of a finished `locked` read (none when it failed)."""
    if locked is not None and locked.done() and locked.exception() is None:
        held, _ = locked.result()
        if held is not None:
            held.close()


def take(pipeline: Pipeline) -> EarlyReads | None:
    """The early reads of this call of `pipeline`'s flow, the first time they are asked for;
    None when no call started them (or another pipeline's did, or they were taken)."""
    reads = _EARLY.get()
    if reads is None or reads.pipeline is not pipeline or not reads.take():
        return None
    return reads
