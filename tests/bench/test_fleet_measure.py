"""The fleet benchmark's measures: capacity violations over many runs' components, and
a run's ETA read from its plan."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from bench.fleet_measure import (
    Interval,
    empty_pool,
    eta_from_plan,
    eta_ratio,
    held_idle,
    lateness,
    lower_bound,
    machine_cpu,
    machine_cpu_seconds,
    over_capacity,
    plan_rows_planned,
    server_cpu_seconds,
    waits,
)

CAPACITY = {"cpu": 2.0, "mem_gib": 3.0}


def test_components_of_two_runs_over_the_pool_are_counted_at_each_start_and_for_how_long():
    intervals = [
        Interval("a", "train", 0.0, 10.0, {"cpu": 1.0, "mem_gib": 2.0}),
        Interval("b", "train", 2.0, 6.0, {"cpu": 1.0, "mem_gib": 0.5}),  # fits beside it
        Interval("b", "features", 4.0, 8.0, {"cpu": 2.0, "mem_gib": 0.5}),  # 4 cores from 4 s to 6 s, 3 to 8 s
        Interval("c", "score", 10.0, 12.0, {"cpu": 2.0, "mem_gib": 1.0}),  # starts as train ends: fits
    ]
    sweep = over_capacity(intervals, CAPACITY)
    assert sweep["violations"] == 1  # one start (features at 4 s) made the demand exceed the pool
    assert sweep["seconds_over"] == pytest.approx(4.0)
    assert sweep["peak_cpu"] == 4.0 and sweep["peak_mem_gib"] == 3.0
    assert over_capacity(intervals[:2] + intervals[3:], CAPACITY)["violations"] == 0


def test_the_eta_is_the_plans_eta_line_else_its_publication_plus_the_planned_makespan():
    eta = datetime(2026, 12, 1, 11, 0, 30, tzinfo=UTC).timestamp()
    with_line = "| planned makespan | 12.00 s |\n| ETA (planned finish) | 2026-12-01 11:00:30 UTC |"
    assert eta_from_plan(with_line, created=0.0) == eta
    # since the ETA has an allowance (eta_history.py): the expected finish, not the planned one
    expected = "| planned finish | 2026-12-01 11:00:12 UTC |\n| ETA (expected finish) | 2026-12-01 11:00:30 UTC |"
    assert eta_from_plan("| planned makespan | 12.00 s |\n" + expected, created=0.0) == eta
    assert eta_from_plan("| planned makespan | 12.50 s |", created=100.0) == 112.5
    assert eta_from_plan("no plan here", created=100.0) is None
    assert eta_ratio(submitted=100.0, finished=130.0, eta=120.0) == 1.5
    assert eta_ratio(submitted=100.0, finished=130.0, eta=90.0) is None  # an ETA before submission says nothing


def test_the_lower_bound_is_the_declared_work_over_the_pool_and_idle_waits_are_told_from_full_ones():
    intervals = [
        Interval("a", "load", 0.0, 4.0, {"cpu": 2.0, "mem_gib": 1.0}),
        Interval("a", "train", 6.0, 10.0, {"cpu": 1.0, "mem_gib": 1.0}),  # ready at 4 s, the pool empty until 6 s
        Interval("b", "load", 4.0, 8.0, {"cpu": 1.0, "mem_gib": 1.0}),
        Interval("b", "score", 9.0, 10.0, {"cpu": 2.0, "mem_gib": 1.0}),  # ready at 8 s, room only from 10 s
    ]
    assert lower_bound(intervals, CAPACITY) == {"cpu_work_s": 18.0, "lower_bound_s": 9.0}
    upstream = {"p": {"train": ("load",), "score": ("load",), "load": ()}}
    found = waits(intervals, upstream, {"a": "p", "b": "p"}, {"a": 0.0, "b": 0.0}, CAPACITY)
    # b's load waited 4 s for a's 2 cores (no room); a's train 2 s with room (lost), b's score 1 s without
    assert found == {"ready_wait_s": 7.0, "idle_wait_s": 2.0}


def test_cores_the_ledger_held_beyond_the_running_components_are_summed_between_samples():
    intervals = [Interval("a", "train", 0.0, 4.0, {"cpu": 1.0}), Interval("b", "score", 2.0, 4.0, {"cpu": 1.0})]
    # held: 2 cores from 0 s (one idle until b starts at 2 s), then 2 used, then 1 held after both ended
    samples = [(0.0, 2.0), (1.0, 2.0), (2.0, 2.0), (3.0, 2.0), (4.0, 1.0), (5.0, 0.0)]
    figures = held_idle(samples, intervals)
    assert figures["held_idle_cpu_s"] == pytest.approx(2.0 + 1.0)  # 1 core idle 0-2 s, 1 core 4-5 s
    assert figures["cpu_held_mean"] == pytest.approx(9.0 / 5.0)
    assert held_idle([(0.0, 1.0)], intervals) == {"held_idle_cpu_s": 0.0, "cpu_held_mean": 0.0}


def test_the_cores_held_idle_while_a_step_claims_the_pools_turn_are_told_apart():
    intervals = [Interval("a", "load", 0.0, 3.0, {"cpu": 1.0}), Interval("b", "wide", 3.0, 5.0, {"cpu": 2.0})]
    # b claims the turn at 1 s and takes the free core (held idle 1-3 s) until a's load ends at 3 s;
    # a's lease lingers 0.5 s after 5 s with the turn free (idle, but not in a claim)
    samples = [(0.0, 1.0), (1.0, 2.0), (2.0, 2.0), (3.0, 2.0), (4.0, 2.0), (5.0, 1.0), (5.5, 0.0)]
    turn = [(0.0, 0.0), (1.0, 1.0), (2.0, 1.0), (3.0, 0.0), (5.0, 0.0)]
    figures = held_idle(samples, intervals, turn)
    assert figures["held_idle_cpu_s"] == pytest.approx(2.0 + 0.5)
    assert figures["held_idle_in_claims_cpu_s"] == pytest.approx(2.0)
    assert figures["turn_held_s"] == pytest.approx(2.0)


def test_the_pool_standing_empty_is_found_with_what_the_ledger_held_meanwhile():
    intervals = [
        Interval("a", "load", 0.0, 2.0, {"cpu": 1.0}),
        Interval("b", "train", 4.0, 6.0, {"cpu": 2.0}),  # nothing ran 2-4 s: a stall of 2 s
        Interval("a", "score", 6.5, 7.0, {"cpu": 1.0}),  # 0.5 s: shorter than a stall
    ]
    # the ledger held one core 2-3 s (nothing running) and the turn from 2 s to 4 s
    cpu = [(0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (3.0, 0.0), (4.0, 2.0), (6.0, 0.0), (7.0, 0.0)]
    turn = [(0.0, 0.0), (2.0, 1.0), (4.0, 0.0), (7.0, 0.0)]
    figures = empty_pool(intervals, cpu, turn)
    assert figures == {
        "empty_stalls": 1,
        "empty_stall_s": 2.0,
        "empty_cpu_held_mean": pytest.approx(0.5),  # one core for half of it
        "empty_turn_held_share": pytest.approx(1.0),
    }
    assert empty_pool(intervals[:1], cpu, turn)["empty_stalls"] == 0
    assert empty_pool([], cpu, turn) == {}


def test_a_run_behind_its_plan_tells_estimates_that_ran_short_from_waits_for_the_pool():
    rows = [  # the plan table: a then b, seconds from the plan
        {"component": "a", "start_s": 0.0, "finish_s": 2.0},
        {"component": "b", "start_s": 2.0, "finish_s": 3.0},
    ]
    planned = plan_rows_planned(rows, planned_at=100.0)
    assert planned == {"a": (100.0, 102.0), "b": (102.0, 103.0)}
    # a ran 1 s over its estimate; b was ready at 103 and waited 2 s for the pool, then ran on time
    actual = {"a": (100.0, 103.0), "b": (105.0, 106.0)}
    behind = lateness(planned, actual, {"b": ("a",)})
    assert behind == {"finish_late_s": 3.0, "overrun_s": 1.0, "start_late_s": 2.0}
    # a step that starts before its planned start is not late, whatever its inputs
    assert lateness(planned, {"a": (100.0, 102.0), "b": (101.5, 102.5)}, {})["start_late_s"] == 0.0


def test_the_machines_cpu_over_a_burst_is_told_apart_from_the_components_work(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    figures = machine_cpu(used_s=150.0, seconds=100.0, work_s=80.0)
    assert figures == {"machine_cpu_s": 150.0, "machine_busy_share": 0.75, "orchestration_cpu_s": 70.0}
    assert machine_cpu(1.0, 0.0, 0.0)["machine_busy_share"] == 0.0
    before, until = machine_cpu_seconds(), time.monotonic() + 5
    while machine_cpu_seconds() < before + 0.05 and time.monotonic() < until:  # this process's spinning counts
        sum(range(1000))
    assert machine_cpu_seconds() >= before + 0.05


def test_the_server_s_own_cpu_is_read_from_the_process_in_the_state_folder_s_pid_file(tmp_path, monkeypatch):
    import os

    from planflow.settings import StatePaths

    paths = StatePaths(tmp_path)
    monkeypatch.setattr(StatePaths, "discover", classmethod(lambda cls: paths))
    assert server_cpu_seconds() is None  # no pid file: unknown, not 0
    paths.pid_file.parent.mkdir(parents=True, exist_ok=True)
    paths.pid_file.write_text(str(os.getpid()))  # this process stands for the server
    before, until = server_cpu_seconds(), time.monotonic() + 5
    assert before is not None
    while server_cpu_seconds() < before + 0.05 and time.monotonic() < until:
        sum(range(1000))
    assert server_cpu_seconds() >= before + 0.05
    paths.pid_file.write_text("not a pid")
    assert server_cpu_seconds() is None
