"""What a run does per step beside the step (issue 14, N = 400): no function source read per
step, one log line per batch of completed steps, the plan's artifacts after the first
release, and at the bus's first flush or with the end's. No server; the timings are bench/bench_overhead.py's."""

from __future__ import annotations

import inspect
import logging
import threading
from dataclasses import replace

import toy_dags

from planflow.core.component import Component, component
from planflow.core.pipeline import Pipeline, Step
from planflow.planner import PlannerOptions
from planflow.runtime import reporters
from planflow.runtime.dispatch import StepRecord
from planflow.runtime.events import EventBus, Reporter, RunInfo, StepEvent
from planflow.runtime.executors import InProcessExecutor
from planflow.runtime.planning import RunPlan, plan_pipeline
from planflow.runtime.reporters import ArtifactReporter, LogReporter, ProgressReporter

LOCAL = {"local": {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}}


def _diamond() -> RunInfo:
    pp = plan_pipeline(toy_dags.diamond, LOCAL, {}, PlannerOptions(time_limit_s=5))
    plan = RunPlan(pools={}, capacities=LOCAL, assignments=pp.assignments, plan=pp)
    return RunInfo(toy_dags.diamond, dict(toy_dags.diamond.params), "plan", "inprocess", None, plan)


def twice(x: int = 1) -> int:
    return 2 * x


def test_a_components_source_is_read_once_and_its_steps_tasks_keep_its_options(monkeypatch):
    comp = component(twice, cpu=1, retries=2, pools=["local"])
    reads = []
    getsource = inspect.getsource
    monkeypatch.setattr(inspect, "getsource", lambda fn: reads.append(fn) or getsource(fn))
    assert len({comp.code_version for _ in range(50)}) == 1 and len(reads) <= 1  # 0: found before
    submitted = []
    monkeypatch.setattr(Component, "submit", lambda task, **kwargs: submitted.append(task))
    executor = InProcessExecutor(Pipeline("copies", [Step("s1", comp), Step("s2", comp)]), {}, {"x": 1})
    executor.start("s1", {}), executor.start("s2", {})
    assert len(reads) <= 1, "a step's task read its function's source again"
    assert [(t.name, t.task_run_name, t.retries, t.spec) for t in submitted] == [
        ("s1", "s1", 2, comp.spec),
        ("s2", "s2", 2, comp.spec),
    ]
    assert comp.name == "twice" and all(type(t) is Component and t.task_key == comp.task_key for t in submitted)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_steps_completed_between_two_flushes_are_one_log_line_naming_each():
    logger = logging.getLogger("planflow.test.lines")
    handler = Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        run, reporter = _diamond(), LogReporter(logger)
        bus = EventBus([reporter], logger, flush_seconds=60)
        for i, step in enumerate(run.plan.order):  # queued before the bus starts: one batch
            bus.step(run, "completed", StepRecord(step, "local", "Completed", float(i), i + 0.25))
        with bus:
            pass
        bus = EventBus([reporter], logger, flush_seconds=60)
        bus.step(run, "completed", StepRecord("report", "local", "Completed", 1.0, 1.5))
        with bus:
            pass
    finally:
        logger.removeHandler(handler)
    first, second = handler.lines
    assert first.startswith(f"{len(run.plan.order)} components completed:")
    assert all(f"{step} completed on local in 0.25 s" in first for step in run.plan.order)
    assert second == "report completed on local in 0.50 s"


class Order(Reporter):
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.planned = threading.Event()

    def on_planned(self, run: RunInfo) -> None:
        self.calls.append("planned")
        self.planned.set()

    def on_step(self, event) -> None:
        self.calls.append(event.kind)


def test_the_plan_reaches_the_reporters_at_the_first_step_event_or_within_its_bound():
    run, seen = _diamond(), Order()
    bus = EventBus([seen], logging.getLogger("test"), flush_seconds=60)
    bus.planned_hold = 30.0
    with bus:
        bus.planned(run)
        assert not seen.planned.wait(0.3), "the plan was delivered before any step was released"
        bus.step(run, "started", StepRecord("extract", "local", "Running", 0.0))
        assert seen.planned.wait(10)
    assert seen.calls == ["planned", "started"]
    seen, bus = Order(), EventBus([Order()], logging.getLogger("test"), flush_seconds=60)
    bus.reporters, bus.planned_hold = [seen], 0.2
    with bus:
        bus.planned(run)  # no step event comes: delivered once the hold is up
        assert seen.planned.wait(10)


class PlanWrites(ArtifactReporter):
    """ArtifactReporter with its writes recorded instead of sent (no server here)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.written = threading.Event()

    def _planned(self, run: RunInfo) -> None:
        self.calls.append("plan artifacts")
        self.written.set()

    def _planned_vs_actual(self, run: RunInfo, records) -> None:
        self.calls.append("planned vs actual")

    def _summary(self, run: RunInfo, records) -> None:
        self.calls.append("summary")

    def _totals(self, run: RunInfo, records) -> None:
        self.calls.append("totals")


def test_the_plan_artifacts_wait_for_the_first_flush_and_a_run_done_sooner_has_them_with_its_end():
    """The plan's picture and uploads no longer compete with a short run's first steps: a
    run that ends before the bus's first flush has them written with its end's artifacts;
    a longer one at that flush, while it runs. A fifo run (no plan) has none."""
    run = _diamond()
    record = StepRecord("extract", "local", "Completed", 0.0, 0.1)
    short = PlanWrites()
    with EventBus([short], logging.getLogger("test"), flush_seconds=60) as bus:
        bus.planned(run)
        bus.step(run, "started", record)
        assert not short.written.wait(0.5), "the plan's artifacts were written before the bus's first flush"
        bus.finished(run, {"extract": record})
    assert sorted(short.calls) == ["plan artifacts", "planned vs actual", "summary", "totals"]
    longer = PlanWrites()
    with EventBus([longer], logging.getLogger("test"), flush_seconds=0.2) as bus:
        bus.planned(run)
        bus.step(run, "started", record)
        assert longer.written.wait(10), "the plan's artifacts were not written at the bus's first flush"
        assert longer.calls == ["plan artifacts"]
        bus.finished(run, {"extract": record})
    assert longer.calls == ["plan artifacts", *sorted(longer.calls[1:])] and len(longer.calls) == 4
    fifo = PlanWrites()
    with EventBus([fifo], logging.getLogger("test"), flush_seconds=0.2) as bus:
        bus.planned(RunInfo(run.pipeline, run.params, "fifo", "inprocess", None, replace(run.plan, plan=None)))
        bus.finished(run, {"extract": record})
    assert "plan artifacts" not in fifo.calls


def test_the_progress_artifact_is_made_at_the_first_flush_with_the_share_finished_then(monkeypatch):
    made, updated = [], []
    monkeypatch.setattr(reporters, "create_progress_artifact", lambda progress, **_: made.append(progress) or "id")
    monkeypatch.setattr(reporters, "update_progress_artifact", lambda artifact_id, progress: updated.append(progress))
    run, progress = _diamond(), ProgressReporter()
    steps = list(run.plan.order)
    progress.on_planned(run)
    assert made == [], "the progress artifact was made when the run was planned, beside its first steps"
    progress.on_step(StepEvent("completed", StepRecord(steps[0], "local", "Completed", 0.0, 0.1), run))
    progress.flush()
    assert made == [100.0 / len(steps)] and updated == []
    progress.on_step(StepEvent("completed", StepRecord(steps[1], "local", "Completed", 0.1, 0.2), run))
    progress.flush()
    progress.flush()  # nothing new: no request
    assert made == [100.0 / len(steps)] and updated == [200.0 / len(steps)]
