"""Reporters subscribe to a run's events: order, copies, batching, failures, bounds.

The EventBus and the reporters are exercised here without a Prefect server; the run flow
with real artifacts and logs is in test_runner.py.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import toy_dags
from prometheus_client import CollectorRegistry

from planflow.monitoring.metrics import RunRecorder
from planflow.ops.processes import wait_until
from planflow.planner import PlannerOptions
from planflow.runtime.dispatch import dispatch
from planflow.runtime.events import EventBus, Reporter, RunInfo, add_listener, subscribe, subscribers
from planflow.runtime.planning import RunPlan, plan_pipeline
from planflow.runtime.reporters import MetricsReporter

CAPACITY = {"local": {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}}


def _run() -> RunInfo:
    pp = plan_pipeline(toy_dags.diamond, CAPACITY, {}, PlannerOptions(time_limit_s=5))
    plan = RunPlan(pools={}, capacities=CAPACITY, assignments=pp.assignments, plan=pp)
    return RunInfo(toy_dags.diamond, dict(toy_dags.diamond.params), "plan", "inprocess", None, plan)


def _dispatch(run: RunInfo, bus: EventBus, fail: str | None = None):
    """The diamond through the real dispatcher, on threads, announcing to `bus`."""

    def work(step: str) -> int:
        time.sleep(0.02)
        if step == fail:
            raise ValueError(f"{step} broke")
        return 1

    upstream = {name: run.pipeline.upstream(name) for name in run.pipeline.steps}
    with ThreadPoolExecutor(4) as pool:
        records, _ = dispatch(
            upstream,
            run.plan.assignments,
            run.plan.capacities,
            lambda step, outputs: pool.submit(work, step),
            lambda kind, record: bus.step(run, kind, record),
        )
    return records


class Recorder(Reporter):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_planned(self, run):
        self.calls.append(("planned",))

    def on_step(self, event):
        self.calls.append((event.kind, event.record.step, event.record.state))

    def on_finished(self, run, records):
        self.calls.append(("finished", tuple(sorted(r.state for r in records.values()))))

    def flush(self):
        self.calls.append(("flush",))


def test_every_event_arrives_in_order_with_the_record_as_it_was_then():
    run, seen = _run(), Recorder()
    with EventBus([seen], logging.getLogger("test")) as bus:
        bus.planned(run)
        records = _dispatch(run, bus)
        bus.finished(run, records)
    events = [c for c in seen.calls if c[0] != "flush"]
    assert events[0] == ("planned",) and events[-1] == ("finished", ("Completed",) * 4)
    steps = [c for c in events if c[0] in ("started", "completed")]
    assert len(steps) == 8
    for kind, _, state in steps:  # a copy: "started" still says Running, though the step completed since
        assert state == {"started": "Running", "completed": "Completed"}[kind]
    order = [(kind, step) for kind, step, _ in steps]
    assert order.index(("completed", "total")) < order.index(("started", "report"))
    assert order.index(("completed", "scaled")) < order.index(("started", "report"))
    assert seen.calls[-1] == ("flush",)


def test_a_held_end_reaches_the_reporters_only_when_the_bus_is_closed_or_its_bound_runs_out():
    run, seen = _run(), Recorder()
    bus = EventBus([seen], logging.getLogger("test"), hold_end=True).__enter__()
    bus.planned(run)
    records = _dispatch(run, bus)
    bus.finished(run, records)
    bus.end()  # no more events: the thread goes on by itself, up to the held end
    assert wait_until(lambda: any(c[0] == "completed" for c in seen.calls), 30, interval=0.05)  # delivered
    time.sleep(0.5)
    assert not any(c[0] == "finished" for c in seen.calls)  # held: the final state comes first
    bus.close()  # the final-state hook's part
    assert ("finished", ("Completed",) * 4) in seen.calls and seen.calls[-1] == ("flush",)

    bounded = Recorder()
    alone = EventBus([bounded], logging.getLogger("test"), drain_timeout=0.3, hold_end=True)
    with alone:  # never released by anyone: the bus goes on after its drain timeout
        alone.finished(run, records)
        alone.end()
        assert wait_until(lambda: bool(bounded.calls), 30, interval=0.05), "the held end was never delivered"
        assert bounded.calls[0] == ("finished", ("Completed",) * 4)


def test_events_queued_together_are_flushed_once():
    run, seen = _run(), Recorder()
    bus = EventBus([seen], logging.getLogger("test"))
    for _ in range(5):  # queued before the bus's thread starts: one batch
        bus.planned(run)
    with bus:
        pass
    assert seen.calls.count(("planned",)) == 5
    assert seen.calls.count(("flush",)) <= 2 and seen.calls[-1] == ("flush",)


class Broken(Reporter):
    def on_planned(self, run):
        raise RuntimeError("planned broke")

    def on_step(self, event):
        raise RuntimeError("step broke")


def test_a_failing_reporter_is_logged_once_and_the_others_still_get_every_event(caplog):
    run, seen = _run(), Recorder()
    logger = logging.getLogger("planflow.test-events")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        with EventBus([Broken(), seen], logger) as bus:
            bus.planned(run)
            records = _dispatch(run, bus)
            bus.finished(run, records)
    assert {r.state for r in records.values()} == {"Completed"}
    assert len([c for c in seen.calls if c[0] in ("started", "completed")]) == 8
    messages = [r.getMessage() for r in caplog.records]
    first = [m for m in messages if m.startswith("reporter Broken failed in")]
    assert first == ["reporter Broken failed in on_planned: RuntimeError: planned broke (the run goes on)"]
    assert caplog.records[messages.index(first[0])].exc_info is not None  # with its traceback
    assert "reporter Broken failed on 9 event(s) of this run (the run went on)" in messages


class Stuck(Reporter):
    def __init__(self) -> None:
        self.release = threading.Event()

    def on_planned(self, run):
        self.release.wait(60)


def test_a_stuck_reporter_holds_the_run_only_as_long_as_the_bound(caplog):
    stuck, logger = Stuck(), logging.getLogger("planflow.test-events")
    started = time.monotonic()
    try:
        with caplog.at_level(logging.ERROR, logger=logger.name):
            with EventBus([stuck], logger, drain_timeout=0.5) as bus:
                bus.planned(_run())
        waited = time.monotonic() - started
    finally:
        stuck.release.set()
    assert waited < 30
    assert (
        "planflow reporters did not finish within 0.5 s (Stuck is still in on_planned); the run returns "
        "without them, so some artifacts or metrics of this run may be missing"
    ) in [r.getMessage() for r in caplog.records]


class Slow(Reporter):
    def on_step(self, event):
        time.sleep(0.3)


def test_a_slow_reporter_does_not_slow_the_dispatcher():
    run, seen = _run(), Recorder()
    with EventBus([Slow(), seen], logging.getLogger("test")) as bus:
        records = _dispatch(run, bus)
    makespan = max(r.finished for r in records.values())
    assert makespan < 8 * 0.3  # delivered in line, the 8 step events alone would take 2.4 s
    assert len([c for c in seen.calls if c[0] in ("started", "completed")]) == 8  # all delivered before exit


def test_subscribe_and_unsubscribe():
    reporter = Recorder()
    remove = subscribe(reporter)
    assert reporter in subscribers()
    remove()
    remove()  # twice is harmless
    assert reporter not in subscribers()
    calls = []
    remove = add_listener(lambda kind, record: calls.append(kind))
    try:
        (listener,) = [r for r in subscribers() if r.name.startswith("listener ")]
        assert "test_subscribe_and_unsubscribe" in listener.name
    finally:
        remove()
    assert not [r for r in subscribers() if r.name.startswith("listener ")]


class CountingRecorder(RunRecorder):
    pushes = 0

    def push(self) -> None:
        self.pushes += 1


def test_a_run_interrupted_while_a_step_ran_is_recorded_as_crashed():
    """The runner hands an interrupted run's records with its running steps Crashed (runner._so_far)."""
    from dataclasses import replace  # noqa: PLC0415

    run = _run()
    recorder = CountingRecorder("toy-diamond", pushgateway_url=None, registry=CollectorRegistry())
    with EventBus([MetricsReporter(recorder)], logging.getLogger("test")) as bus:
        bus.planned(run)
        records = _dispatch(run, bus)
        records = {**records, "total": replace(records["total"], state="Crashed", error=SystemExit(143))}
        bus.finished(run, records)
    finished = recorder.registry.get_sample_value
    assert finished("planflow_pipeline_runs_finished_total", {"pipeline": "toy-diamond", "state": "crashed"}) == 1.0
    assert finished("planflow_pipeline_runs_finished_total", {"pipeline": "toy-diamond", "state": "completed"}) is None


def test_metrics_are_recorded_from_events_and_pushed_once_per_batch():
    run = _run()
    recorder = CountingRecorder("toy-diamond", pushgateway_url=None, registry=CollectorRegistry())
    with EventBus([MetricsReporter(recorder)], logging.getLogger("test")) as bus:
        bus.planned(run)
        records = _dispatch(run, bus, fail="scaled")
        bus.finished(run, records)
    value = recorder.registry.get_sample_value
    key = {"pipeline": "toy-diamond", "component": "total", "pool": "local"}
    assert value("planflow_component_duration_seconds_count", {**key, "state": "completed"}) == 1.0
    assert value("planflow_component_failures_total", {**key, "component": "scaled"}) == 1.0
    assert value("planflow_component_running", key) == 0.0
    assert value("planflow_component_planned_duration_seconds", key) == pytest.approx(0.2)
    assert value("planflow_pipeline_running", {"pipeline": "toy-diamond"}) == 0.0
    assert value("planflow_pipeline_runs_finished_total", {"pipeline": "toy-diamond", "state": "failed"}) == 1.0
    assert value("planflow_plan_makespan_seconds", {"pipeline": "toy-diamond"}) == pytest.approx(0.6)
    events = 1 + 3 + 3 + 1  # planned; numbers and total and scaled start and end (report skipped); finished
    assert 1 <= recorder.pushes <= events
