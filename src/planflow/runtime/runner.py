"""One run of a pipeline: plan -> dispatch -> record.

1. **plan** (planning.py): the pools the run may use and where and when each step
   goes: placed by the planner (policy "plan"; durations learned from earlier runs
   where there are any) or first come, first served (policy "fifo", what Prefect does
   without a plan: there to measure what the plan buys).
2. **dispatch** (dispatch.py, executors.py): each step is released in plan order when
   its inputs are ready and its pool has room, on an executor: tasks of this flow run
   (mode "inprocess") or child flow runs on the pools' work pools (mode "distributed",
   distributed.py).
3. **record** (events.py, reporters.py): the run announces its events (planned, each
   step started/completed/failed/skipped, finished) to the reporters that subscribe:
   artifacts (plan, planned versus actual, summary, totals), progress, metrics, the run
   log, and whatever a process subscribed (the terminal's progress bar, add_listener).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import ExitStack, nullcontext
from dataclasses import replace
from functools import partial
from typing import Any

from prefect import get_run_logger
from prefect.context import get_run_context

from planflow.core.pipeline import Pipeline
from planflow.monitoring.metrics import RunRecorder, pushgateway_url_from_env
from planflow.prefect.blocks.registry import DEFAULT_POOL, read_run_blocks
from planflow.prefect.limits import require_limits
from planflow.runtime import reporting
from planflow.runtime.caching import refreshing, step_state
from planflow.runtime.calendar import busy_steps, planning_lock
from planflow.runtime.dispatch import POLL_SECONDS, Assignment, StepRecord
from planflow.runtime.distributed import DistributedExecutor
from planflow.runtime.eta_history import allowance, main_pool
from planflow.runtime.events import EventBus, Reporter, RunInfo, add_listener, subscribe, subscribers
from planflow.runtime.executors import Executor, InProcessExecutor, execute, warm_task_threads
from planflow.runtime.fifo_eta import place_fifo
from planflow.runtime.isolation import kill_isolated_children, warm_forkserver
from planflow.runtime.planning import RunPlan, check_run_options, make_plan, plan_run, run_pools
from planflow.runtime.reporters import (
    ArtifactReporter,
    HistoryReporter,
    LogReporter,
    MetricsReporter,
    ProgressReporter,
)
from planflow.runtime.reporting import key_metrics
from planflow.runtime.results import ResultsBound
from planflow.runtime.run_calendar import RunCalendar
from planflow.runtime.run_end import after_final_state, finish_pending, hooked
from planflow.runtime.run_reads import RunReads, read_for_run
from planflow.runtime.run_slots import RunSlots
from planflow.runtime.tags import PIPELINE_TAG_PREFIX, PLANFLOW_TAG, caller_tags_only
from planflow.runtime.watchdog import unwatch_later, watch_run
from planflow.settings import settings

# Also importable from here, where they were before the run was split in stages.
__all__ = [
    "DEFAULT_POOL",
    "PIPELINE_TAG_PREFIX",
    "PLANFLOW_TAG",
    "PipelineRunError",
    "add_listener",
    "key_metrics",
    "make_plan",
    "run_pipeline",
    "run_pools",
    "subscribe",
]


class PipelineRunError(RuntimeError):
    """A step of the pipeline failed; the message names it and its error."""


def run_reporters(
    pipeline: Pipeline,
    logger: logging.Logger | logging.LoggerAdapter,
    recorder: RunRecorder | None = None,
    calendar: RunCalendar | None = None,
) -> list[Reporter]:
    """The reporters of one run: the log, the pool calendar (and ETA), the process's
    subscribers (e.g. the terminal), progress, metrics, artifacts, the duration history and the bound on the
    results folder, in the order each event reaches them."""
    recorder = recorder or RunRecorder(pipeline.name, pushgateway_url_from_env())
    return [
        LogReporter(logger),
        *([calendar] if calendar is not None else []),
        *subscribers(),
        ProgressReporter(),
        MetricsReporter(recorder),
        ArtifactReporter(),
        HistoryReporter(),
        ResultsBound(),
    ]


def make_executor(run: RunInfo) -> Executor:
    if run.mode == "distributed":
        return DistributedExecutor(
            run.pipeline, run.plan.pools, run.plan.assignments, run.params, run.flow_run_id or "local"
        )
    if run.mode == "dask":
        from planflow.runtime.dask_executor import DaskExecutor  # noqa: PLC0415 (distributed is heavy: Dask mode only)

        return DaskExecutor(run.pipeline, run.plan.assignments, run.params)
    return InProcessExecutor(run.pipeline, run.plan.assignments, run.params)


def run_pipeline(
    pipeline: Pipeline,
    params: Mapping[str, Any] | None = None,
    policy: str = "plan",
    mode: str = "inprocess",
    local_pool: str = DEFAULT_POOL,
    refresh: bool = False,
) -> dict[str, Any]:
    """Run `pipeline` inside the current flow run; returns a JSON-able summary.

    mode "inprocess": components are tasks of this flow run; "distributed": each is a
    flow run of its pool's component deployment (see distributed.py); "dask": each is a
    task on the Dask cluster (see dask_executor.py). `refresh`: components cached across
    runs compute again (the first attempt only: a retry of the flow run reads back what
    that attempt stored)."""
    check_run_options(policy, mode)
    logger = get_run_logger()
    resolved = pipeline.resolve_params(params)
    context = get_run_context()
    flow_run = context.flow_run
    # Until the flow run is final (flow.py's state hooks): a dead server fails the run
    # within PLANFLOW_SERVER_LOST_SECONDS instead of hanging (watchdog.py). A pipeline's
    # flow started it when the run became Running (flow.py); this is for a flow of one's own.
    watch_run(str(flow_run.id) if flow_run else None)
    if flow_run is not None:
        finish_pending(str(flow_run.id))  # a retry: the last attempt's reporting ends first
    try:
        refresh = refresh and (getattr(flow_run, "run_count", 1) or 1) <= 1
        flow = getattr(context, "flow", None)
        local_pool = _pool_of_work_pool(mode, local_pool, getattr(flow_run, "work_pool_name", None), logger)
        with caller_tags_only():  # the run's own tags stay off its task runs
            return _run(pipeline, resolved, policy, mode, local_pool, flow_run, logger, refresh, flow)
    finally:  # in case no state hook stops it (run_pipeline called from a flow of one's own)
        unwatch_later(str(flow_run.id) if flow_run else None)


def _pool_of_work_pool(
    mode: str, local_pool: str, work_pool: str | None, logger: logging.Logger | logging.LoggerAdapter
) -> str:
    """The pool an in-process run stands for: on a worker of work pool W, with `local_pool`
    left at its default, the ResourcePool whose work pool is W (a deployment on another
    work pool planned and took slots on `local`, whose machine it does not run on, while its
    own pool's capacity and calendar went unused); else `local_pool`."""
    if mode != "inprocess" or local_pool != DEFAULT_POOL or not work_pool:
        return local_pool
    pools = read_run_blocks().pools
    if local_pool in pools and pools[local_pool].work_pool == work_pool:
        return local_pool
    mine = sorted(name for name, pool in pools.items() if pool.work_pool == work_pool)
    if len(mine) != 1:  # none, or several to choose from: the default, as before
        return local_pool
    logger.info(
        "Pool '%s': the ResourcePool of work pool '%s', which this run is on (local_pool chooses another)",
        mine[0],
        work_pool,
    )
    return mine[0]


def _run(
    pipeline: Pipeline,
    resolved: Mapping[str, Any],
    policy: str,
    mode: str,
    local_pool: str,
    flow_run: Any,
    logger: logging.Logger | logging.LoggerAdapter,
    refresh: bool = False,
    flow: Any = None,
) -> dict[str, Any]:
    options = settings()
    shared = options.shared_slots
    recorder = RunRecorder(pipeline.name, pushgateway_url_from_env())
    calendar = None
    if shared and flow_run is not None:
        calendar = RunCalendar(str(flow_run.id), flow_run.name, logger, recorder)
    bus: EventBus | None = None
    seen: dict[str, StepRecord] = {}  # each step's last event: the end's report if the run is interrupted
    later = flow_run is not None and hooked(flow)
    if mode == "inprocess":  # its steps are tasks of this flow run: their threads start meanwhile
        warm_task_threads(len(pipeline.steps))
        if any(pipeline.isolation_of(step) == "process" for step in pipeline.steps):
            warm_forkserver()  # its start-up (1.5 s and more) beside the reads and the plan
    try:
        # the pools, limits, settings and history, and the run's tags: read side by side
        # with the planning slot taken and the calendar read beside the other reads
        reads = read_for_run(
            pipeline, policy, mode, local_pool, resolved, refresh, flow_run, shared, lock_calendar=calendar is not None
        )
        if shared:
            plan = plan_shared(pipeline, policy, mode, local_pool, calendar, resolved, refresh, reads)
        else:
            plan = plan_run(
                pipeline, policy, mode, local_pool, reads.pools, params=resolved, refresh=refresh, inputs=reads.inputs
            )
        run = RunInfo(pipeline, resolved, policy, mode, str(flow_run.id) if flow_run else None, plan)
        # the end's artifacts after the run's final state when its hook waits for them (run_end.py)
        bus = EventBus(run_reporters(pipeline, logger, recorder, calendar), logger, hold_end=later).__enter__()
        bus.planned(run)
        # first in its pool's order among the waiting: a step claims at once; refused: marked
        # waiting, so that the steps after it in the order yield to it
        first_on, on_refused = (calendar.first_on, calendar.waiting) if calendar is not None else (None, None)
        run_slots: Any = nullcontext()
        if shared:
            run_slots = RunSlots(limits=reads.limits, log=logger, first_on=first_on, on_refused=on_refused)
        with refreshing(refresh), run_slots as admit:
            slots = admit
            if admit is not None and calendar is not None and policy == "plan" and options.hold_to_calendar:
                admit = calendar.admit(admit)  # start where the calendar says (kept current by re-planning)
            if admit is not None and calendar is not None:
                # a failed first save of the entry fails the step; the save goes once the first slots are asked
                admit = _AfterWrite(admit, calendar.first_save_error, calendar.slots_asked)
            notify = partial(bus.step, run)
            if calendar is not None:
                notify = calendar.listen(run, notify)
            notify = _remembering(notify, seen)
            records = execute(make_executor(run), pipeline, plan.assignments, plan.capacities, notify, admit)
            bus.finished(run, records)  # held until the final state when `later` (run_end.py)
        if slots is not None:
            logger.info(
                "Shared slots: %d requests for slots, %d refused (pools full), %d limits read "
                "(%d more reads taken from this machine's other runs), %d leases taken over "
                "from this machine's other runs",
                slots.requests,
                slots.refusals,
                slots.reads,
                slots.reads_shared,
                slots.handed_over,
            )
    except BaseException as exc:
        # an interrupt, a termination signal, Prefect's Abort or Pause: no final-state hook
        # may come in this process, so the reporting ends now, with what its steps did so far
        later = later and isinstance(exc, Exception)
        if not isinstance(exc, Exception):  # the process is going down: its isolated steps' processes too
            kill_isolated_children()
        if bus is not None and seen and not isinstance(exc, Exception):
            bus.finished(run, _so_far(plan.assignments, seen, exc))
        raise
    finally:
        end_reporting(bus, calendar, str(flow_run.id) if later else None)
    raise_if_failed(pipeline, records)
    return summary(run, records)


def _remembering(
    notify: Callable[[str, StepRecord], None], seen: dict[str, StepRecord]
) -> Callable[[str, StepRecord], None]:
    def remember(event: str, record: StepRecord) -> None:
        seen[record.step] = record
        notify(event, record)

    return remember


def _so_far(
    assignments: Mapping[str, Assignment], seen: Mapping[str, StepRecord], cause: BaseException
) -> dict[str, StepRecord]:
    """Every step's record when the run was interrupted by `cause`: its last event's, or
    Pending; a step running then is Crashed, with `cause` as its error (as Prefect calls a
    run ended by a signal)."""
    out = {}
    for name, a in assignments.items():
        record = seen.get(name) or StepRecord(name, a.pool)
        out[name] = replace(record, state="Crashed", error=cause) if record.state == "Running" else record
    return out


def end_reporting(bus: EventBus | None, calendar: RunCalendar | None, later: str | None) -> None:
    """The run's steps are done (or it failed): its reporters finish after its final state,
    in the flow's final-state hook, for flow run `later` (run_end.py); else now. The
    calendar entry goes with them, also when the run failed before its reporters' end (the
    calendar reporter deletes it there; deleting twice is nothing)."""
    if bus is not None:
        bus.end()

    def close() -> None:
        if bus is not None:
            bus.close()
        if calendar is not None:
            calendar.delete()

    if bus is not None and later:
        after_final_state(later, close)
    else:
        close()


def plan_shared(
    pipeline: Pipeline,
    policy: str,
    mode: str,
    local_pool: str,
    calendar: RunCalendar | None,
    params: Mapping[str, Any] | None = None,
    refresh: bool = False,
    reads: RunReads | None = None,
) -> RunPlan:
    """Plan a run that shares its pools: their concurrency limits exist and match their
    blocks; the calendar is read, the run planned (policy "plan") or placed first come,
    first served (policy "fifo", for its ETA) into what is left and its reservations
    written, all under the planning slot. `reads`: what read_for_run read (read now when
    None), the slot already held and the calendar read under it when it took them
    (`lock_calendar`). The entry is saved on a thread of its own, which gives the slot
    back once it is saved: the run takes its first slots and starts its first components
    meanwhile (`_AfterWrite`: a save that failed fails them)."""
    reads = reads or read_for_run(pipeline, policy, mode, local_pool, params, refresh, None, True)
    planning = reads.planning or ExitStack()  # closed: the planning slot goes back
    try:
        pools, inputs = reads.pools, reads.inputs  # the inputs are read before the slot
        require_limits({name: pool.capacity() for name, pool in pools[0].items()}, reads.limits)
        if calendar is None:
            planning.close()
            return plan_run(pipeline, policy, mode, local_pool, pools, params=params, refresh=refresh, inputs=inputs)
        if reads.planning is None:
            planning.enter_context(planning_lock())
        if policy == "fifo":
            plan = place_fifo(
                plan_run(pipeline, policy, mode, local_pool, pools, refresh=refresh),
                pipeline,
                calendar.run_id,
                params,
                mode,
            )
        else:
            plan = plan_run(
                pipeline,
                policy,
                mode,
                local_pool,
                pools,
                busy_steps(calendar.run_id, reads.calendar),
                params=params,
                refresh=refresh,
                inputs=inputs,
            )
        allowed = allowance(reads.eta_ratios, main_pool(plan.assignments), plan.busy > 0, pipeline.name)
        plan = replace(plan, allowance=allowed)
        calendar.write(pipeline.name, plan.assignments, plan.planned_at, then=planning.close, allowed=allowed)
    except BaseException:
        planning.close()
        raise
    return plan


class _AfterWrite:
    """The dispatcher's `admit` beside the first save of the run's calendar entry: a step's
    take fails, naming why, when that save has failed; it no longer waits for the save
    (about 50 ms of a server's artifact write before the first component, with nothing
    to gain: the planning slot is held until the save ends, so no other run plans
    meanwhile, and the saver retries a failed first save at the next change). The save
    itself waits for the first round to be prepared (`asked`, called once after the first
    `prepare`, which asks for the short steps' slots as one batch; at once when `take` has
    no `prepare`): the server answers those increments first."""

    def __init__(
        self, take: Any, save_error: Callable[[], BaseException | None], asked: Callable[[], None] | None = None
    ) -> None:
        self.take, self._save_error = take, save_error
        self._prepare = getattr(take, "prepare", None)
        self._asked = asked
        if self._prepare is None and asked is not None:
            asked()
        self.prepare = None if self._prepare is None else self._prepare_then_tell
        self.wake_with = getattr(take, "wake_with", None)

    def _prepare_then_tell(self, ready: Any) -> None:
        try:
            self._prepare(ready)  # type: ignore[misc]
        finally:
            if self._asked is not None:
                asked, self._asked = self._asked, None
                asked()

    @property
    def poll_seconds(self) -> float:
        return getattr(self.take, "poll_seconds", POLL_SECONDS)

    def __call__(self, a: Assignment) -> Any:
        error = self._save_error()
        if error is not None:
            raise error
        return self.take(a)


def raise_if_failed(pipeline: Pipeline, records: Mapping[str, StepRecord]) -> None:
    """PipelineRunError naming the first failed step, its error and the steps not run."""
    failed = [r for r in records.values() if r.state == "Failed"]
    if failed:
        first = failed[0]
        skipped = [r.step for r in records.values() if r.state == "Skipped"]
        raise PipelineRunError(
            f"step '{first.step}' of pipeline '{pipeline.name}' failed: "
            f"{type(first.error).__name__}: {first.error}" + (f" (not run: {', '.join(skipped)})" if skipped else "")
        ) from first.error


def _usage(record: StepRecord) -> dict[str, Any] | None:
    usage = record.usage  # a step run in a process of its own (isolation.py)
    return usage.to_dict() if usage is not None else None


def summary(run: RunInfo, records: Mapping[str, StepRecord]) -> dict[str, Any]:
    """What `run_pipeline` returns (and `planflow run --json` prints)."""
    pp = run.plan.plan
    return {
        "pipeline": run.pipeline.name,
        "flow_run_id": run.flow_run_id,
        "params": dict(run.params),
        "policy": run.policy,
        "mode": run.mode,
        "makespan_s": reporting.actual_makespan(records),
        "plan": reporting.plan_figures(pp) if pp else None,
        "steps": {
            name: {
                "state": step_state(records[name]),
                "pool": records[name].pool,
                "seconds": records[name].seconds,
                "metrics": key_metrics(records[name].result),
                **reporting.usage_figures(run.pipeline, records[name]),
                "usage": _usage(records[name]),
            }
            for name in run.plan.order
        },
    }
