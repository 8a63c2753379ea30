"""The pool calendar's pure parts: capacity over time from other runs' reservations,
the terminal picture, waiting runs; the ETA gauge. (Reading and writing the calendar
through a real server is in test_shared_pools.py.)"""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from planflow.cli.calendar import (
    calendar_png,
    calendar_text,
    cpu_over_time,
    expected_places,
    gantt_text,
    runs_under_way,
    waiting_runs,
)
from planflow.core.component import component
from planflow.core.pipeline import Pipeline
from planflow.core.pipeline import Step as PipelineStep
from planflow.monitoring.metrics import RunRecorder
from planflow.ops.processes import wait_until
from planflow.planner import Step
from planflow.prefect.calendar_store import CalendarEntry
from planflow.runtime.calendar import (
    OVERRUN_SECONDS,
    Reservation,
    ahead_of,
    capacity_steps,
    held_intervals,
    reservations,
)
from planflow.runtime.dispatch import Assignment, StepRecord
from planflow.runtime.events import StepEvent
from planflow.runtime.run_calendar import RunCalendar

CAP = {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}
NOW = 1_000.0


def res(component: str, start: float, finish: float, cpu: float, state: str = "planned", run: str = "r1"):
    return Reservation(run, f"name-{run}", "pipe", component, "local", start, finish, {"cpu": cpu}, state)


def test_other_runs_reservations_become_the_pools_capacity_over_time():
    items = [res("a", NOW, NOW + 10, 1, "running"), res("b", NOW + 5, NOW + 20, 1), res("c", NOW + 30, NOW + 40, 2)]
    steps = capacity_steps(CAP, items, NOW)
    assert [(s.start, s.end, s.capacity["cpu"]) for s in steps] == [
        (0.0, 5.0, 1.0),
        (5.0, 10.0, 0.0),
        (10.0, 20.0, 1.0),
        (30.0, 40.0, 0.0),
    ]
    assert all(isinstance(s, Step) and s.capacity["mem_gib"] == 4.0 for s in steps)


def test_late_and_overrunning_reservations_are_moved_to_now():
    items = [
        res("late", NOW - 10, NOW - 4, 1),  # planned, its start has passed: moved to now, same length
        res("over", NOW - 20, NOW - 5, 1, "running"),  # running past its finish: assumed to end soon
        res("gone", NOW - 20, NOW - 10, 1, "done"),
    ]
    assert held_intervals(items, NOW) == [(0.0, 6.0, {"cpu": 1}), (0.0, 1.0, {"cpu": 1})]


def test_more_held_than_the_pool_has_leaves_nothing_not_less():
    steps = capacity_steps(CAP, [res("a", NOW, NOW + 5, 3, "running")], NOW)
    assert steps[0].capacity["cpu"] == 0.0


def _entry(run: str, states: list[str], start: float) -> CalendarEntry:
    return CalendarEntry(
        flow_run_id=run,
        flow_run_name=f"name-{run}",
        pipeline="pipe",
        planned_at=NOW,
        eta=start + 10,
        reservations=[
            {
                "component": f"c{i}",
                "pool": "local",
                "start": start,
                "finish": start + 10,
                "demand": {"cpu": 1},
                "state": s,
            }
            for i, s in enumerate(states)
        ],
    )


def test_the_calendar_shows_running_and_planned_components_and_waiting_runs():
    entries = [_entry("r1", ["running", "planned"], NOW), _entry("r2", ["planned"], NOW + 10)]
    text = "\n".join(calendar_text(entries, {"local": CAP}, {"local": {"cpu": 1.0}}, NOW))
    assert "pool local: cpu=2 gpu=0 mem_gib=4  held now: cpu=1 gpu=0 mem_gib=0" in text
    assert "running" in text and "planned" in text
    assert "waiting runs (expected start -> finish):" in text
    assert " c1 " in text and " c1                   waiting " not in text
    entries[0].reservations[1]["waiting"] = True  # ready, and refused its slots
    text = "\n".join(calendar_text(entries, {"local": CAP}, {"local": {"cpu": 1.0}}, NOW))
    assert " c1                   waiting " in text
    (waiting,) = waiting_runs(entries, "local")
    assert waiting[0].flow_run_id == "r2" and waiting[1:] == (NOW + 10, NOW + 20)
    # the run under way: its expected finish, as a waiting run's is shown (the entry's ETA)
    assert "runs under way (components done, expected finish):" in text
    entries.append(_entry("r3", ["done", "running", "planned"], NOW - 5))
    assert [(e.flow_run_id, done, total) for e, done, total in runs_under_way(entries, "local")] == [
        ("r3", 1, 3),
        ("r1", 0, 2),
    ]
    text = "\n".join(calendar_text(entries, {"local": CAP}, {"local": {"cpu": 1.0}}, NOW))
    assert "name-r3                  pipe                 1/3 done, finish" in text
    assert runs_under_way(entries, "gpu") == []
    bars = gantt_text([res("a", NOW, NOW + 10, 1, "running"), res("b", NOW + 10, NOW + 20, 1, run="r2")], NOW, width=20)
    assert bars[1].endswith("|##########          |") and bars[2].endswith("|          ----------|")
    assert calendar_png(entries, "local", CAP, NOW)[:4] == b"\x89PNG"


def test_a_picture_of_the_calendar_places_late_components_where_the_pool_can_hold_them():
    """Two components running on the whole pool past their plan's finish, and three planned
    ones whose starts have passed: the picture drew all five from now, 5 cpu on a pool of 2."""
    items = [
        res("a", NOW - 20, NOW + 5, 1, "running"),
        res("b", NOW - 20, NOW - 2, 1, "running", run="r2"),  # over its finish: to end within OVERRUN_SECONDS
        res("c", NOW - 10, NOW, 2, run="r3"),  # late: needs the whole pool
        res("d", NOW - 5, NOW + 5, 1, run="r3"),
        res("e", NOW + 100, NOW + 110, 1, run="r4"),  # far ahead: stays where planned
    ]
    places = {r.component: (start - NOW, finish - NOW) for r, start, finish in expected_places(items, CAP, NOW)}
    assert places == {"a": (-20, 5), "b": (-20, 1), "c": (5, 15), "d": (15, 25), "e": (100, 110)}
    _, used = cpu_over_time(expected_places(items, CAP, NOW), NOW)
    assert max(used) == 2.0
    bars = gantt_text(items, NOW, width=22, capacity=CAP)  # 5 s a column, from now to 110 s
    assert [line.rsplit("|", 2)[1].rstrip() for line in bars[1:]] == ["#", "#", " --", "   --", " " * 20 + "--"]
    # a component over the pool's capacity alone is drawn where planned (its run is refused at plan time)
    alone = expected_places([res("huge", NOW + 3, NOW + 4, 5)], CAP, NOW)
    assert [(start, finish) for _, start, finish in alone] == [(NOW + 3, NOW + 4)]


def test_a_late_step_moves_the_steps_of_its_run_planned_after_it_and_the_report_says_late():
    """A trial's calendar drew a run's second step before its first, which ran over: the
    picture placed each step where the pool had room, as if it had no inputs, and the
    table kept the late rows ("finish 15 s ago") without a word."""
    items = [
        res("first", NOW - 20, NOW - 2, 1, "running"),  # over its finish: to end OVERRUN_SECONDS from now
        res("second", NOW - 2, NOW + 8, 1),  # planned after it (its input): the pool has room now
        res("other", NOW - 1, NOW + 4, 1, run="r2"),  # another run's, planned to overlap: not held back
    ]
    places = {r.component: (start - NOW, finish - NOW) for r, start, finish in expected_places(items, CAP, NOW)}
    assert places["first"] == (-20, OVERRUN_SECONDS)
    assert places["second"] == (OVERRUN_SECONDS, OVERRUN_SECONDS + 10), places
    assert places["other"] == (0, 5), places
    bars = gantt_text(items, NOW, width=20, capacity=CAP)
    assert [line.split("|")[0].strip() for line in bars[1:]] == ["name-r1/first", "name-r2/other", "name-r1/second"]

    entry = _entry("r1", ["running", "planned"], NOW - 30)  # both planned NOW-30..NOW-20: ETA 20 s ago
    text = calendar_text([entry], {"local": CAP}, {"local": {"cpu": 1.0}}, NOW)
    rows = {line.split()[1]: line.split()[2] for line in text if line.startswith("  name-r1 ") and "done" not in line}
    assert rows == {"c0": "overrun", "c1": "late"}, text
    assert any("0/2 done, finish" in line and line.endswith("(20 s ago), late") for line in text), text


def test_an_empty_pool_says_so():
    assert calendar_text([], {"local": CAP}, {}, NOW)[1] == "  (nothing running or planned)"


def test_slots_held_by_no_running_component_are_named_with_when_they_come_back():
    """A run killed with kill -9 left `held now: cpu=1` and nothing running, unexplained, for
    a minute (its lease's end)."""
    text = calendar_text([], {"local": CAP}, {"local": {"cpu": 1.0, "mem_gib": 0.25}}, NOW)
    assert text[1].startswith("  held by no running component: cpu=1 gpu=0 mem_gib=0.25 (")
    assert "a run that died: its lease ends within PLANFLOW_SLOT_LEASE_SECONDS" in text[1]
    assert "a waiting step that has the pool's turn and keeps what it took" in text[1]  # a trial met that one
    running = [_entry("r1", ["running"], NOW)]
    assert "held by no running component" not in "\n".join(
        calendar_text(running, {"local": CAP}, {"local": {"cpu": 1.0, "mem_gib": 0.001}}, NOW)
    )  # what runs explains it (the rest is memory's rounding to whole MiB)


def test_the_eta_gauge():
    registry = CollectorRegistry()
    RunRecorder("pipe", registry=registry).eta(NOW + 42)
    assert registry.get_sample_value("planflow_pipeline_eta_timestamp_seconds", {"pipeline": "pipe"}) == NOW + 42


def _planned_entry(run: str, planned_at: float, reservations: list[tuple[str, float, float, str]]) -> CalendarEntry:
    return CalendarEntry(
        flow_run_id=run,
        flow_run_name=f"name-{run}",
        pipeline="pipe",
        planned_at=planned_at,
        eta=max(f for _, _, f, _ in reservations),
        reservations=[
            {"component": c, "pool": "local", "start": s, "finish": f, "demand": {"cpu": 2}, "state": state}
            for c, s, f, state in reservations
        ],
    )


def test_a_run_yields_to_the_runs_planned_before_it_and_to_what_runs_not_to_later_plans():
    earlier = _planned_entry("early", NOW - 5, [("e0", NOW, NOW + 4, "running"), ("e1", NOW + 4, NOW + 8, "planned")])
    later = _planned_entry("late", NOW + 5, [("l0", NOW, NOW + 2, "running"), ("l1", NOW + 2, NOW + 9, "planned")])
    mine = _planned_entry("me", NOW, [("m0", NOW + 8, NOW + 10, "planned")])
    seen = ahead_of([earlier, later, mine], "me", NOW)
    assert [(e.flow_run_id, [r["component"] for r in e.reservations]) for e in seen] == [
        ("early", ["e0", "e1"]),
        ("late", ["l0"]),  # its planned l1 comes after this run's plan: it re-plans around this run
    ]
    assert [r["component"] for r in later.reservations] == ["l0", "l1"]  # the entry read is left as it was


def test_a_re_plan_keeps_a_run_ahead_of_the_runs_planned_after_it():
    """The run planned first slipped: its waiting component is re-planned right after
    what runs now, not behind the later run's planned components (which then move)."""
    pipeline = Pipeline("pipe", [PipelineStep("m0", component(_noop, cpu=2, est_seconds=2))])
    calendar = RunCalendar("me", "name-me", logging.getLogger("test"))
    calendar.entry = _planned_entry("me", NOW, [("m0", NOW - 1, NOW + 1, "planned")])
    capacities = {"local": {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}}
    calendar.run = SimpleNamespace(pipeline=pipeline, plan=SimpleNamespace(capacities=capacities))
    later = _planned_entry("late", NOW + 5, [("l0", NOW, NOW + 3, "running"), ("l1", NOW + 3, NOW + 20, "planned")])
    eta = calendar._replace([later, calendar.entry], NOW)
    assert eta == NOW + 3 + 2  # after l0 ends (3 s), not after l1 (20 s)
    earlier = _planned_entry("early", NOW - 5, [("e0", NOW, NOW + 3, "running"), ("e1", NOW + 3, NOW + 20, "planned")])
    assert calendar._replace([earlier, calendar.entry], NOW) == NOW + 20 + 2  # a run planned before it goes first


def _noop() -> None:
    return None


def test_a_re_plan_places_into_the_look_it_is_given_and_takes_no_planning_slot(monkeypatch):
    """The watcher's look is the re-plan's calendar: no planning slot (an increment, a
    decrement, often a refusal) and no second read of every entry; one save."""
    from planflow.runtime import calendar as calendar_module
    from planflow.runtime import run_calendar

    def no_request(*args, **kwargs):
        raise AssertionError("a re-plan given a look reads nothing and takes no slot")

    monkeypatch.setattr(calendar_module, "read_calendar", no_request)
    monkeypatch.setattr(run_calendar, "read_calendar", no_request, raising=False)
    monkeypatch.setattr(calendar_module, "planning_lock", no_request)
    monkeypatch.setattr(run_calendar, "planning_lock", no_request, raising=False)
    pipeline = Pipeline("pipe", [PipelineStep("m0", component(_noop, cpu=2, est_seconds=2))])
    calendar = RunCalendar("me", "name-me", logging.getLogger("test"))
    now = time.time()
    calendar.entry = _planned_entry("me", now - 10, [("m0", now - 1, now + 1, "planned")])
    calendar.shown = calendar.entry.eta
    capacities = {"local": {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}}
    calendar.run = SimpleNamespace(pipeline=pipeline, plan=SimpleNamespace(capacities=capacities, plan=None))
    saves = []
    monkeypatch.setattr(calendar, "_save", lambda: saves.append(1))
    running = _planned_entry("late", now, [("l0", now - 1, now + 30, "running")])
    eta = calendar.replan([running, calendar.entry])
    assert eta is not None and eta >= now + 30 + 2 - 1  # after what runs now
    assert saves == [1]


def test_a_component_starts_early_beside_what_later_runs_planned_not_beside_what_earlier_ones_did():
    """Held to the calendar, a component whose planned start has not come starts when it fits
    for its whole duration beside what it yields to: the runs planned before its own."""
    pipeline = Pipeline("pipe", [PipelineStep("m0", component(_noop, cpu=2, est_seconds=2))])
    calendar = RunCalendar("me", "name-me", logging.getLogger("test"))
    calendar.entry = _planned_entry("me", NOW, [("m0", NOW + 10, NOW + 12, "planned")])
    capacities = {"local": {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}}
    calendar.run = SimpleNamespace(pipeline=pipeline, plan=SimpleNamespace(capacities=capacities))
    assert not calendar.due("m0", now=NOW)  # nothing seen yet: it waits for its start
    calendar.look([_planned_entry("late", NOW + 5, [("l1", NOW + 1, NOW + 9, "planned")]), calendar.entry])
    assert calendar.due("m0", now=NOW)  # a later run's plan does not hold it back
    calendar.look([_planned_entry("early", NOW - 5, [("e1", NOW + 1, NOW + 9, "planned")]), calendar.entry])
    assert not calendar.due("m0", now=NOW)  # an earlier run's does: m0 would delay e1
    assert calendar.due("m0", now=NOW + 9.6)  # its start has (nearly) come


def test_a_run_planned_alone_and_held_to_the_calendar_gets_a_look_when_a_step_waits_for_its_start(monkeypatch):
    """Planned alone, a run makes no look of its own before REPLAN_SECONDS; a step held
    for its planned start (nothing seen yet) asks for one, so that it starts as soon as it
    fits, not REPLAN_SECONDS later."""
    from planflow.runtime import run_calendar

    pipeline = Pipeline("pipe", [PipelineStep("m0", component(_noop, cpu=2, est_seconds=2))])
    calendar = RunCalendar("me", "name-me", logging.getLogger("test-due-look"))
    now = time.time()
    calendar.entry = _planned_entry("me", now, [("m0", now + 30, now + 32, "planned")])
    capacities = {"local": {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}}
    calendar.run = SimpleNamespace(pipeline=pipeline, plan=SimpleNamespace(capacities=capacities, busy=0))
    reads = []
    monkeypatch.setattr(run_calendar, "look_at_calendar", lambda: reads.append(1) or [calendar.entry])
    watcher = threading.Thread(target=calendar._watch)
    watcher.start()
    try:
        time.sleep(0.5)
        assert reads == []  # planned alone: no look of its own yet
        assert not calendar.due("m0")  # nothing seen yet: held, and it asks for a look
        deadline = time.monotonic() + 2  # well before the run's own first look (REPLAN_SECONDS in)
        assert run_calendar.FIRST_LOOK_ALONE_SECONDS >= 5
        while not calendar.due("m0") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert calendar.due("m0") and reads == [1], "the look a held step asked for did not come"
    finally:
        calendar._stop.set()
        calendar._wake.set()
        watcher.join(5)
    assert not watcher.is_alive()


def test_a_step_comes_first_on_its_pool_unless_another_run_s_waiting_step_is_planned_before_it():
    calendar = RunCalendar("me", "name-me", logging.getLogger("test"))
    calendar.entry = _planned_entry("me", NOW, [("m0", NOW + 1, NOW + 3, "planned")])
    BEFORE = NOW - 20  # looked at before any planned start came
    assert not calendar.first_on("local", "m0", BEFORE)  # not looked yet: no priority taken
    assert calendar._wake.is_set()  # and the watcher is asked to look (the first look may have failed)
    later = _planned_entry("late", NOW + 5, [("l0", NOW + 2, NOW + 4, "planned"), ("l1", NOW - 9, NOW, "planned")])
    calendar.look([later, calendar.entry])
    assert calendar.first_on("local", "m0", BEFORE)  # l1, placed before m0, waits for its inputs: it does not count
    later.reservations[0]["waiting"] = True  # l0 is ready and was refused its slots
    calendar.look([later, calendar.entry])
    assert calendar.first_on("local", "m0", BEFORE)  # l0 is planned after m0
    later.reservations[1]["waiting"] = True  # l1 too: a later run's component placed before m0 (a gap)
    calendar.look([later, calendar.entry])
    assert not calendar.first_on("local", "m0", BEFORE)  # it keeps its place
    assert calendar.first_on("other", "m0", BEFORE)  # on another pool nothing waits
    assert not calendar.first_on("local", "m0", NOW + 0.5)  # the gap is still there: l1 first
    # m0's start has passed too (its run slipped): the gap is gone, the run planned first goes first
    assert calendar.first_on("local", "m0", NOW + 2)
    later.reservations[1]["state"] = "running"
    same_start = _planned_entry("early", NOW - 5, [("e0", NOW + 1, NOW + 8, "planned")])
    same_start.reservations[0]["waiting"] = True
    calendar.look([same_start, later, calendar.entry])
    assert not calendar.first_on("local", "m0", BEFORE)  # the same planned start: the run planned first goes first
    same_start.reservations[0]["state"] = "running"
    calendar.look([same_start, later, calendar.entry])
    assert calendar.first_on("local", "m0", BEFORE)  # both started: m0 is first among those waiting


def test_a_refused_step_is_marked_waiting_in_the_run_s_entry_until_it_starts():
    """RunSlots.on_refused -> RunCalendar.waiting: the mark later runs' first_on reads."""
    calendar = RunCalendar("me", "name-me", logging.getLogger("test"))
    calendar.entry = _planned_entry("me", NOW, [("m0", NOW + 1, NOW + 3, "planned")])
    calendar.waiting("m0")
    calendar.waiting("not-mine")  # a step not in the calendar: nothing to mark
    [r] = reservations([calendar.entry])
    assert r.waiting and r.state == "planned"
    run = SimpleNamespace(plan=SimpleNamespace(assignments={"m0": Assignment("m0", "local", {"cpu": 2}, 0, 1.0, 3.0)}))
    calendar._move(StepEvent("started", StepRecord("m0", "local"), run, at=NOW + 2))
    [r] = reservations([calendar.entry])
    assert not r.waiting and r.state == "running"
    calendar.waiting("m0")  # running: not waiting any more
    assert "waiting" not in calendar.entry.reservations[0]


def test_a_fault_in_re_planning_is_logged_as_a_warning_not_swallowed(monkeypatch, caplog):
    """A busy or unreachable server skips a round quietly; a fault of planflow's own (here
    a broken look at the calendar) is said, with its traceback, and the run goes on."""
    from planflow.runtime import run_calendar

    calendar = RunCalendar("me", "name-me", logging.getLogger("test-replan"))
    calendar.entry = _planned_entry("me", NOW, [("m0", NOW + 10, NOW + 12, "planned")])
    monkeypatch.setattr(run_calendar, "look_at_calendar", lambda: [])

    def broken(entries):
        raise AttributeError("'Reservation' object has no attribute 'run_id'")

    monkeypatch.setattr(calendar, "look", broken)
    watcher = threading.Thread(target=calendar._watch)
    with caplog.at_level(logging.DEBUG, logger="test-replan"):
        watcher.start()
        warned = wait_until(lambda: any(r.levelno == logging.WARNING for r in caplog.records), 30, interval=0.05)
        calendar._stop.set()
        calendar._wake.set()
        watcher.join(5)
    assert warned, "no warning within 30 s (the first look comes 0.2 s after planning)"
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "re-planning failed" in record.getMessage() and record.exc_info[0] is AttributeError
    assert not watcher.is_alive()


def test_a_run_that_yields_to_an_earlier_one_looks_again_soon_not_at_the_next_re_plan(monkeypatch):
    """Not first on a pool, a run asks its watcher for a fresh look (at most every
    FIRST_LOOK_SECONDS), not REPLAN_SECONDS later: the step it yields to has often started
    since. The look alone does not re-plan. Planned alone, the run makes no look before
    one is asked for (or REPLAN_SECONDS pass): 0.2 s in, it was a calendar read beside a
    short run's steps."""
    from planflow.runtime import pool_order, run_calendar

    calendar = RunCalendar("me", "name-me", logging.getLogger("test-first-look"))
    calendar.entry = _planned_entry("me", NOW, [("m0", time.time() + 10, time.time() + 12, "planned")])
    calendar.run = SimpleNamespace(plan=SimpleNamespace(busy=0))  # nothing held at planning: no first re-plan
    earlier = _planned_entry("early", NOW - 5, [("e0", time.time() - 1, time.time() + 3, "planned")])
    earlier.reservations[0]["waiting"] = True  # ready, refused its slots
    reads = []
    monkeypatch.setattr(run_calendar, "look_at_calendar", lambda: reads.append(1) or [earlier, calendar.entry])
    replans = []
    monkeypatch.setattr(calendar, "replan", lambda entries: replans.append(1))
    watcher = threading.Thread(target=calendar._watch)
    watcher.start()
    try:
        time.sleep(0.5)
        assert reads == [], "a run planned alone looked at the calendar before any look was asked for"
        assert not calendar.first_on("local", "m0")  # no look yet: not first, and it asks for one
        deadline = time.monotonic() + 5
        while calendar._waiting_others is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not calendar.first_on("local", "m0")  # e0 waits, planned before it
        assert len(reads) == 1  # the look asked for; the next one is REPLAN_SECONDS away
        earlier.reservations[0]["state"] = "running"
        time.sleep(pool_order.FIRST_LOOK_SECONDS)
        assert not calendar.first_on("local", "m0")  # still as last looked, and it asks for a look
        while not calendar.first_on("local", "m0") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert calendar.first_on("local", "m0") and len(reads) == 2, "the look asked for did not come"
        assert replans == []  # looks asked for do not re-plan (the first due one, REPLAN_SECONDS in, would)
        assert run_calendar.REPLAN_SECONDS > 2 * pool_order.FIRST_LOOK_SECONDS
    finally:
        calendar._stop.set()
        calendar._wake.set()
        watcher.join(5)
    assert not watcher.is_alive()


@pytest.mark.usefixtures("prefect_server")
def test_a_look_at_the_calendar_stands_half_a_second_for_this_machines_other_runs(monkeypatch):
    """Runs waiting on one machine share their looks at the calendar (shared_reads.py): a
    look begun within LOOK_SHARED_SECONDS is taken from the file another run left, each
    entry whole; an older one is read again from the server."""
    from planflow.runtime import calendar, shared_reads

    reads = []
    real = calendar.read_calendar
    monkeypatch.setattr(calendar, "read_calendar", lambda clean=True: reads.append(clean) or real(clean=clean))
    monkeypatch.setattr(calendar, "LOOK_SHARED_SECONDS", 0.0)  # this look reads the server, whatever was left
    assert isinstance(calendar.look_at_calendar(), list) and reads == [False]
    monkeypatch.setattr(calendar, "LOOK_SHARED_SECONDS", 60.0)
    calendar.look_at_calendar()  # what it left (or a newer look of a test beside it) stands
    assert reads == [False]

    entry = CalendarEntry(
        flow_run_id="r1",
        pipeline="p",
        planned_at=10.0,
        eta=20.0,
        reservations=[{"component": "a", "pool": "local", "start": 10.0, "finish": 20.0, "state": "waiting"}],
    )
    key = f"test-{time.time_ns()}"
    shared_reads.store_read(key, time.time(), [calendar.entry_data(entry)])
    began, [data] = shared_reads.load_read(key, time.time() - 5)
    assert CalendarEntry(**data) == entry
    assert shared_reads.load_read(key, began) is None  # begun no later than asked: not taken
    shared_reads._path(shared_reads.reads_folder(), key).unlink()


def test_an_entry_keeps_its_run_once_and_each_reservation_only_what_is_its_own(monkeypatch):
    """Each reservation carried its run's id, name and pipeline too: 40 % of the entry of a
    run of 400 (115 KB), parsed and stored by the server at every save. They are the
    entry's; the calendar's reader gives every reservation its run from there."""
    import json

    saved = []
    monkeypatch.setattr(RunCalendar, "_save", lambda self: saved.append(self.entry))
    calendar = RunCalendar("run-7", "name-7", logging.getLogger("test"))
    assignments = {f"c{i}": Assignment(f"c{i}", "local", {"cpu": 1.0}, 0, i * 1.0, i + 1.0) for i in range(400)}
    calendar.write("pipe-7", assignments, planned_at=NOW)
    calendar.written()
    [entry] = saved
    assert all(
        set(r) == {"component", "pool", "start", "finish", "demand", "state", "waiting"} for r in entry.reservations
    )
    assert len(json.dumps(entry.model_dump())) < 400 * 150  # about 130 bytes a reservation
    first = reservations([entry])[0]
    assert (first.run, first.run_name, first.pipeline, first.component, first.start) == (
        "run-7",
        "name-7",
        "pipe-7",
        "c0",
        NOW,
    )
