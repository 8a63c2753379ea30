"""What a run reads from the server before it plans, read side by side.

A run needs, before its plan: the ResourcePool blocks it may use, the pools' concurrency
limits (to check them against the blocks), the PlannerSettings block (read with the
pools, one request: read_run_blocks) and the learned
durations and memory (plan_inputs), and its flow run tagged for planflow's automations.
None of these depends on another (the history only on how many runs back the settings
say: it is read as far back as the default settings keep, and again only when the block
asks for more), yet read one after another they were about ten server round trips before
the first component, 0.05-0.4 s each on a loaded server. Here they are one round of
threads (each in a copy of the run's context: Prefect's settings and run logger live there).

A run that plans into the pool calendar also takes the planning slot in that round and
reads the calendar under it (`lock_calendar`): the slot's request and the calendar's read
no longer wait for the other reads, nor the plan for them (two round trips, 40-55 ms for a
run of 40 trivial components). The slot is held a little longer only when it was free:
a run that waits for it has its other reads done when it gets it.

    reads = read_for_run(pipeline, "plan", "inprocess", "local", params, refresh, flow_run, shared=True)
    reads.pools, reads.limits, reads.inputs
    reads = read_for_run(..., lock_calendar=True)   # reads.planning holds the slot: close it
    with reads.planning: ... reads.calendar ...
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from planflow.core.pipeline import Pipeline
from planflow.prefect.blocks.planner_settings import PlannerSettings
from planflow.prefect.blocks.registry import RunBlocks, read_run_blocks
from planflow.prefect.calendar_store import CalendarEntry
from planflow.prefect.limits import read_limits
from planflow.runtime.calendar import locked_calendar
from planflow.runtime.early_reads import here, release_untaken
from planflow.runtime.early_reads import take as take_early_reads
from planflow.runtime.eta_history import known_main_pool, read_ratios_or_none
from planflow.runtime.history import read_history, read_once
from planflow.runtime.planning import PlanInputs, plan_inputs, run_pools
from planflow.runtime.tags import tag_flow_run


@dataclass(frozen=True)
class RunReads:
    """The pools a run may use (and the names of all), the server's concurrency limits
    (None when the run does not share its pools), the plan's inputs (None under fifo);
    with `lock_calendar`, the planning slot held (closing `planning` gives it back) and,
    under policy plan, the calendar read under it."""

    pools: tuple[dict[str, Any], set[str]]
    limits: Mapping[str, Any] | None
    inputs: PlanInputs | None
    planning: ExitStack | None = None
    calendar: list[CalendarEntry] | None = None
    eta_ratios: Mapping[str, list[float]] | None = None  # how late earlier runs finished (eta_history.py)


def _pools_and_settings(
    mode: str, local_pool: str, read: Future[RunBlocks] | None = None
) -> tuple[tuple[dict[str, Any], set[str]], RunBlocks]:
    """The pools the run may use (run_pools) and the blocks they came from, settings with
    them; `read`: the blocks' read under way (early_reads.py), else they are read here."""
    blocks = read.result() if read is not None else read_run_blocks()
    return run_pools(mode, local_pool, blocks.pools), blocks


def read_for_run(
    pipeline: Pipeline,
    policy: str,
    mode: str,
    local_pool: str,
    params: Mapping[str, Any] | None,
    refresh: bool,
    flow_run: Any,
    shared: bool,
    lock_calendar: bool = False,
) -> RunReads:
    """Every read a run makes before it plans, at once; the first error is raised as is
    (after the other reads ended: none is left running, and a planning slot taken is
    given back). `lock_calendar`: also take the planning slot, and read the calendar under
    it when the policy plans (RunReads.planning, .calendar)."""
    planned = policy == "plan"
    locked: Future[tuple[ExitStack, list[CalendarEntry] | None]] | None = None
    early = take_early_reads(pipeline)  # started when the flow was called, if it was
    try:
        # read_once: the threads share one read of each component's history (history.py)
        with read_once(early.history_store if early else None), ExitStack() as stack:
            threads: ThreadPoolExecutor | None = None  # made for the first read that needs a thread

            def submit(fn: Callable[..., Any], *args: Any) -> Future[Any]:
                nonlocal threads
                if threads is None:
                    threads = stack.enter_context(ThreadPoolExecutor(max_workers=8, thread_name_prefix="planflow-read"))
                return threads.submit(contextvars.copy_context().run, fn, *args)

            # With the early reads under way, what is left (the blocks' parse, the tags a called
            # flow's run was created with) is done here: a pool of threads and their starts cost
            # more, beside the task threads starting (warm_task_threads)
            beside = here if early is not None else submit

            def started(read: Future[Any] | None, fn: Callable[..., Any], *args: Any) -> Future[Any]:
                return read if read is not None else submit(fn, *args)

            early_lock = early.locked if early is not None else None
            if early_lock is not None and lock_calendar and early.calendar_read == planned:
                locked = early_lock
            elif early_lock is not None:  # not what this run needs (no calendar, another policy): given back
                wait([early_lock])
                release_untaken(early_lock)
            if lock_calendar and locked is None:
                locked = submit(locked_calendar, planned)
            # the ETA's, by key for the run's main pool when known (in-process: its local pool)
            pool = known_main_pool(mode, local_pool)
            early_ratios = early.ratios if early is not None and early.ratios_pool == pool else None
            ratios = started(early_ratios, read_ratios_or_none, pool, pipeline.name) if lock_calendar else None
            tagged = beside(tag_flow_run, flow_run, pipeline.name) if flow_run is not None else None
            # one request for both blocks (early: read already, or under way)
            pools = beside(_pools_and_settings, mode, local_pool, early.blocks if early else None)
            limits = started(early and early.limits, read_limits) if shared else None
            # the history as many runs back as the default settings keep, beside the settings'
            # read: plan_inputs reads again only when the block asks for more runs than that
            runs = PlannerSettings().history_runs
            history = started(early and early.history, read_history, pipeline, runs) if planned else None
            usable, blocks = pools.result()
            found = (usable, limits.result() if limits else None)
            if history is not None:
                history.result()
            if tagged is not None:
                tagged.result()
            inputs = plan_inputs(pipeline, params, refresh, blocks.settings, mode) if planned else None
            planning, calendar = locked.result() if locked is not None else (None, None)
            eta_ratios = ratios.result() if ratios is not None else None
    except BaseException:
        if locked is not None:  # another read failed: the slot goes back (taken early: once taken)
            wait([locked])
            release_untaken(locked)
        raise
    return RunReads(found[0], found[1], inputs, planning, calendar, eta_ratios)
