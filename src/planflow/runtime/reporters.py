"""The reporters every run has: artifacts, progress, metrics and the run log.

Each subscribes to the run's events (events.py) and keeps to one concern:

- ArtifactReporter: the plan table and figures at the bus's first flush after the plan
  (about a second into the run) or, for a run done sooner, with the end's; planned
  versus actual, the summary and the totals when finished (keys `<slug>-plan`,
  `-plan-figures`, `-planned-vs-actual`, `-summary`, `-totals`).
- ProgressReporter: the `<slug>-progress` artifact, the share of steps finished.
- MetricsReporter: the run's figures (monitoring.metrics.RunRecorder), pushed to the
  Pushgateway when no other event is waiting: one push per batch of events.
- LogReporter: the plan, the run's start and each completed step in the flow run's log.
- HistoryReporter: each completed step's duration (and peak memory, when the record
  carries it) into the duration history (history.py) the planner learns from, written
  once per batch of events.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext

from planflow.monitoring.metrics import RunRecorder
from planflow.runtime import history, reporting
from planflow.runtime.caching import step_state
from planflow.runtime.dispatch import StepRecord
from planflow.runtime.events import FINAL_STEP_EVENTS, Reporter, RunInfo, StepEvent
from planflow.settings import StatePaths, make_private_dir, settings, write_private

HISTORY_WRITE_SECONDS = 30.0  # the longest a run holds observations back from the history while it runs


class ArtifactReporter(Reporter):
    """The run's tables, markdown and Gantt pictures, as Prefect artifacts of the flow run.

    The plan's two artifacts are written at the bus's first flush (EventBus.flush_seconds
    after it started, about a second into the run), or with the end's artifacts when the
    run is done before: a picture to draw (18 ms of CPU for 40 components) and two
    uploads, which beside the first steps of a short run took a core's share from them
    (a run of 40 trivial components completed 0.47 s after its call instead of 0.58 s,
    side by side in one benchmark). Nobody reads a plan in the second its run starts;
    a longer run has it a second in."""

    def __init__(self) -> None:
        self._plan: RunInfo | None = None  # planned, its artifacts not written yet

    def on_planned(self, run: RunInfo) -> None:
        self._plan = run if run.plan.plan is not None else None  # policy fifo: nothing was planned

    def flush(self) -> None:
        run, self._plan = self._plan, None
        if run is not None:
            self._planned(run)

    def _planned(self, run: RunInfo) -> None:
        pp, name = run.plan.plan, run.pipeline.name
        assert pp is not None
        create_table_artifact(
            key=reporting.artifact_key(run.pipeline, "plan"),
            table=reporting.plan_rows(pp),
            description=f"{name}: the plan (pool, start, finish, resources, estimate source)",
        )
        png = reporting.gantt_png(pp, title=f"{name}: plan")
        create_markdown_artifact(
            key=reporting.artifact_key(run.pipeline, "plan-figures"),
            markdown=reporting.plan_markdown(pp, name, png, run.plan.planned_at or None, run.plan.allowance),
            description=f"{name}: makespan, bound, gap, solver and the Gantt chart",
        )

    def on_finished(self, run: RunInfo, records: Mapping[str, StepRecord]) -> None:
        """Its three artifacts (and the plan's, when not written yet) side by side (each a
        server round trip, the first also a picture to draw): the run's end waits for the
        slowest, not for their sum."""
        planned, self._plan = self._plan, None
        writes = [self._planned_vs_actual, self._summary, self._totals]
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="planflow-artifact") as threads:
            futures = [threads.submit(contextvars.copy_context().run, write, run, records) for write in writes]
            if planned is not None:
                futures.append(threads.submit(contextvars.copy_context().run, self._planned, planned))
        for future in futures:
            future.result()  # the first error, as the reporter's failure

    def _planned_vs_actual(self, run: RunInfo, records: Mapping[str, StepRecord]) -> None:
        pp, name = run.plan.plan, run.pipeline.name
        if pp is None:
            return
        png = reporting.gantt_png(pp, records, title=f"{name}: planned and actual")
        create_markdown_artifact(
            key=reporting.artifact_key(run.pipeline, "planned-vs-actual"),
            markdown=reporting.actual_markdown(pp, records, name, png),
            description=f"{name}: per component, start against plan and actual/planned duration; makespan achieved",
        )
        if run.flow_run_id:  # the picture beside the state folder, for `planflow` to show
            folder = make_private_dir(StatePaths.discover().home / "plans")  # were 0755 and 0644
            write_private(folder / f"{run.flow_run_id}.png", png)

    def _summary(self, run: RunInfo, records: Mapping[str, StepRecord]) -> None:
        create_table_artifact(
            key=reporting.artifact_key(run.pipeline, "summary"),
            table=reporting.summary_rows(run.pipeline, records, run.plan.order),
            description=f"{run.pipeline.name}: component, state, pool, duration, declared and measured CPU and "
            "memory, key metric",
        )

    def _totals(self, run: RunInfo, records: Mapping[str, StepRecord]) -> None:
        create_markdown_artifact(
            key=reporting.artifact_key(run.pipeline, "totals"),
            markdown=reporting.totals_markdown(run.pipeline, records),
            description=f"{run.pipeline.name}: total resource demand and time",
        )


class ProgressReporter(Reporter):
    """The share of steps finished (completed, failed or skipped), as a progress artifact;
    created at the bus's first flush (about a second into the run; with the end for a run
    done sooner, at its final share) and updated once per batch of events after."""

    def __init__(self) -> None:
        self.artifact_id: Any = None
        self.run: RunInfo | None = None
        self.total = 0
        self.finished = 0
        self.shown = 0.0

    def on_planned(self, run: RunInfo) -> None:
        self.run, self.total = run, len(run.plan.assignments)

    def on_step(self, event: StepEvent) -> None:
        if event.kind in FINAL_STEP_EVENTS:
            self.finished += 1

    def flush(self) -> None:
        progress = 100.0 * self.finished / self.total if self.total else 0.0
        if self.artifact_id is None and self.run is not None:
            run, self.run = self.run, None  # tried once: a server that refused it is not asked every flush
            self.artifact_id = create_progress_artifact(
                progress=progress,
                key=reporting.artifact_key(run.pipeline, "progress"),
                description=f"{run.pipeline.name}: share of components finished",
            )
            self.shown = progress
        elif self.artifact_id is not None and progress != self.shown:
            update_progress_artifact(self.artifact_id, progress)
            self.shown = progress


class MetricsReporter(Reporter):
    """The run's figures for Prometheus (see monitoring/metrics.py), pushed to the
    Pushgateway once per batch of events rather than once per event."""

    def __init__(self, recorder: RunRecorder) -> None:
        self.recorder = recorder
        self.pending = False

    def on_planned(self, run: RunInfo) -> None:
        pp = run.plan.plan
        if pp is None:
            return
        plan = pp.plan
        self.recorder.plan(plan.makespan, plan.lower_bound, plan.gap, plan.solve_seconds, plan.status, plan.solver)
        for pool, peaks in reporting.peak_demand(pp).items():
            for resource, demand in peaks.items():
                capacity = run.plan.capacities[pool].get(resource, 0.0)
                if resource == "mem_gib":  # Prometheus base unit: bytes
                    resource, demand, capacity = "memory_bytes", demand * 2**30, capacity * 2**30
                self.recorder.pool_demand(pool, resource, demand, capacity)
        self.pending = True

    def on_step(self, event: StepEvent) -> None:
        record = event.record
        if event.kind == "started":
            a = event.run.plan.assignments[record.step]
            planned = delay = None
            if a.planned_start is not None and a.planned_finish is not None:
                planned = a.planned_finish - a.planned_start
                delay = (record.started or 0.0) - a.planned_start
            # `seconds`: how long it has run already, so the start time is the event's
            running_for = max(0.0, time.time() - event.at)
            self.recorder.component(record.step, record.pool, "running", running_for, planned, delay)
        elif event.kind in ("completed", "failed"):  # read from the cache: state "cached", apart from real work
            self.recorder.component(record.step, record.pool, step_state(record).lower(), record.seconds)
            usage = record.usage  # set for steps run in a process of their own (runtime/isolation.py)
            if usage is not None:
                self.recorder.component_usage(record.step, record.pool, usage.peak_mem_bytes, usage.cpu_seconds)
            # child flow runs measure themselves (memory.py); kills for memory (oom.py)
            peak = None if usage is not None else record.peak_mem_gib
            self.recorder.memory(record.step, record.pool, peak, record.oom_kills)
        else:
            return
        self.pending = True

    def on_finished(self, run: RunInfo, records: Mapping[str, StepRecord]) -> None:
        states = {r.state for r in records.values()}
        state = "failed" if "Failed" in states else "crashed" if "Crashed" in states else "completed"
        planned = run.plan.plan.plan.makespan if run.plan.plan is not None else None
        self.recorder.run_finished(state, reporting.actual_makespan(records), planned)
        self.pending = True

    def flush(self) -> None:
        if self.pending:
            self.pending = False
            self.recorder.push()


class LogReporter(Reporter):
    """The plan, the start of the run and every completed step, in the flow run's log (the
    steps completed since the last flush in one line)."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter) -> None:
        self.logger = logger
        self._completed: list[str] = []  # logged at the next flush, at most FLUSH_SECONDS later

    def on_planned(self, run: RunInfo) -> None:
        pp = run.plan.plan
        if pp is not None:
            self.logger.info(
                "Plan for %s: makespan %.2f s, lower bound %.2f s, gap %.1f%%, %s by %s in %.2f s",
                run.pipeline.name,
                pp.plan.makespan,
                pp.plan.lower_bound,
                100 * pp.plan.gap,
                pp.plan.status,
                pp.plan.solver,
                pp.plan.solve_seconds,
            )
        count = len(run.plan.assignments)
        self.logger.info(
            "Running %s (%d component%s, policy %s) with %s on pools %s",
            run.pipeline.name,
            count,
            "" if count == 1 else "s",
            run.policy,
            dict(run.params),
            sorted({a.pool for a in run.plan.assignments.values()}),
        )

    def on_step(self, event: StepEvent) -> None:
        if event.kind == "completed":
            record = event.record
            metrics = reporting.fmt_metrics(reporting.key_metrics(record.result))
            self._completed.append(
                f"{record.step} completed on {record.pool} in {record.seconds or 0.0:.2f} s"
                + (f": {metrics}" if metrics else "")
            )

    def flush(self) -> None:
        """The steps completed since the last flush: one log line for all of them (a line
        per step cost about 2.5 ms of the process's time each, 1 s for 400 short steps)."""
        lines, self._completed = self._completed, []
        if len(lines) == 1:
            self.logger.info("%s", lines[0])
        elif lines:
            self.logger.info("%d components completed:\n%s", len(lines), "\n".join(lines))


class HistoryReporter(Reporter):
    """Each completed step's seconds (release to completion, what a plan must predict; in
    Dask mode its compute time on the worker, queueing left out: `ran_seconds`) into the
    history, keyed by its component's code version, with the values of the parameters
    that scale its work. A retry of a flow run (run count > 1) records nothing, nor does
    a step read from the cache: the steps it reads back from stored results did no work;
    nor a run with PLANFLOW_LEARN_DURATIONS=false.

    Written in batches (one record per component version each): at the run's end, and
    while it runs once the oldest unwritten observation is `write_seconds` old. A record
    per bus flush (every second) was the most frequent write a run of short components
    made on the server, beside its slots' requests and competing with them; the other
    runs read the history when they plan, so a batch held for 30 s costs them little."""

    def __init__(self, write_seconds: float = HISTORY_WRITE_SECONDS) -> None:
        self.learn = True
        self.write_seconds = write_seconds
        self.pending: list[history.Observation] = []
        self._oldest = 0.0  # when the oldest pending observation came (monotonic)

    def on_planned(self, run: RunInfo) -> None:
        context = FlowRunContext.get()
        flow_run = context.flow_run if context is not None else None
        retry = flow_run is not None and (flow_run.run_count or 1) > 1
        self.learn = settings().learn_durations and not retry

    def on_step(self, event: StepEvent) -> None:
        record, run = event.record, event.run
        seconds = record.learned_seconds
        if event.kind != "completed" or not self.learn or record.cached or not seconds or seconds <= 0:
            return
        component = run.pipeline.steps[record.step].component
        peak = getattr(record, "peak_mem_gib", None)  # set by executors that measure it
        if not self.pending:
            self._oldest = time.monotonic()
        self.pending.append(
            history.Observation(
                component=component.name,
                code_version=component.code_version,
                pool=record.pool,
                seconds=seconds,
                peak_mem_gib=float(peak) if isinstance(peak, (int, float)) else None,
                work=history.work_values(run.pipeline, record.step, run.params),
                pipeline=run.pipeline.name,
                flow_run_id=run.flow_run_id,
                isolation=history.ran_as(run.pipeline, record.step, run.mode),
            )
        )

    def flush(self) -> None:
        """Write the batch once its oldest observation waited `write_seconds`."""
        if self.pending and time.monotonic() - self._oldest >= self.write_seconds:
            self._write()

    def on_finished(self, run: RunInfo, records: Mapping[str, StepRecord]) -> None:
        self._write()

    def _write(self) -> None:
        """The batch's observations at once: one record per component version."""
        batch, self.pending = self.pending, []
        history.record_many(batch)
