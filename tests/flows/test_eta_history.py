"""The ETA's allowance: how late earlier runs on a pool finished against their plans
(eta_history.py), learned on a real Prefect server and shown in the next run's ETA."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from planflow import to_flow
from planflow.core.component import component
from planflow.core.pipeline import Pipeline, Step
from planflow.runtime import eta_history
from planflow.runtime.dispatch import Assignment
from planflow.runtime.eta_history import (
    MAX_FACTOR,
    MIN_FACTOR,
    Allowance,
    allowance,
    eta_factor,
    eta_key,
    main_pool,
    read_ratios,
    record,
    replayed_makespan,
)
from planflow.runtime.run_calendar import RunCalendar

from tests.flows.own_pool import own_pool

POOL = "eta-allowance"
CAPACITY = {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}


@pytest.fixture(scope="module")
def pool(registered_blocks):
    with own_pool(POOL, CAPACITY) as name:
        yield name


def test_the_allowance_is_the_median_of_the_recent_ratios_clamped_and_none_without_any():
    assert eta_factor([1.1, 1.4, 1.2]) == 1.2
    assert eta_factor([9.0, 8.0]) == MAX_FACTOR and eta_factor([0.1, 0.2]) == MIN_FACTOR
    assert eta_factor([]) is None and eta_factor([0.0, -1.0]) is None
    empty = allowance({}, "p", shared=True, pipeline="Fraud_Risk")
    assert (empty.factor, empty.runs) == (1.0, 0)
    assert empty.keys == ("planflow-eta-p-shared-fraud-risk", "planflow-eta-p-shared")  # its pipeline's, its pool's
    assert "no earlier run" in empty.says()
    pool_wide = {"planflow-eta-p-alone": [1.3, 1.1, 1.2], "planflow-eta-p-alone-few": [2.0]}
    learned = allowance(pool_wide, "p", shared=False, pipeline="few")  # one own run: not enough, the pool's
    assert (learned.factor, learned.runs, learned.own) == (1.2, 3, False) and "x 1.20" in learned.says()
    own = allowance({**pool_wide, "planflow-eta-p-alone-few": [2.0, 1.8]}, "p", shared=False, pipeline="few")
    assert (own.factor, own.runs, own.own) == (1.8, 2, True) and "of this pipeline" in own.says()
    # one incident among two runs (3x late) does not triple-and-halve into the next ETAs: the
    # median of two was their mean (2.0x); with the plan's own makespan counted it is 1.0
    incident = allowance({"planflow-eta-p-alone-few": [1.0, 3.0]}, "p", shared=False, pipeline="few")
    assert (incident.factor, incident.runs, incident.own) == (1.0, 2, True)
    assert allowance(None, None, shared=False) == Allowance()


def test_the_main_pool_carries_most_of_the_planned_time():
    plan = {
        "a": Assignment("a", "small", {"cpu": 1}, 0, 0.0, 3.0),
        "b": Assignment("b", "big", {"cpu": 1}, 1, 0.0, 2.0),
        "c": Assignment("c", "big", {"cpu": 1}, 2, 2.0, 4.0),
    }
    assert main_pool(plan) == "big"
    assert main_pool({}) is None


def test_a_plan_replayed_with_the_durations_taken_keeps_each_planned_wait_after_its_upstream():
    # a -> c, b -> c; c was planned to wait 1 s after a and b (capacity, another run's reservation)
    upstream = {"c": ("a", "b")}.get
    planned = {"a": (0.0, 2.0), "b": (0.0, 3.0), "c": (4.0, 6.0), "d": (1.0, 2.0)}
    as_planned = {"a": 2.0, "b": 3.0, "c": 2.0, "d": 1.0}
    assert replayed_makespan(upstream, planned, as_planned) == 6.0  # durations as planned: the makespan
    longer = {**as_planned, "b": 5.0}  # b overran by 2 s: c starts 1 s after it, ends 2 s later
    assert replayed_makespan(upstream, planned, longer) == 8.0
    shorter = {**as_planned, "a": 0.5, "b": 1.0}  # both quicker: c moves up, keeping its 1 s wait
    assert replayed_makespan(upstream, planned, shorter) == 4.0
    lone = {**as_planned, "d": 9.0}  # no upstream: from its planned start
    assert replayed_makespan(upstream, planned, lone) == 10.0
    assert replayed_makespan(upstream, planned, {"a": 2.0, "b": 3.0}) is None  # c and d have no figure
    assert replayed_makespan(upstream, {}, {}) is None


def test_ratios_are_read_back_newest_first_per_key_and_short_plans_teach_nothing(prefect_server):
    key = eta_key(f"ratios-{uuid.uuid4().hex[:8]}", shared=True)
    for took in (12.0, 14.0, 13.0):
        record([key], planned_seconds=10.0, actual_seconds=took, flow_run_id=None)
    record([key], planned_seconds=0.2, actual_seconds=5.0, flow_run_id=None)  # a 0.2 s plan: noise, not kept
    assert read_ratios()[key] == [1.3, 1.4, 1.2]
    assert allowance(read_ratios(), key.removeprefix("planflow-eta-").removesuffix("-shared"), True).factor == 1.3


def test_a_run_whose_pool_is_known_reads_only_its_keys_and_a_rare_key_on_from_where_it_stopped(
    prefect_server, monkeypatch
):
    """In-process, a run's main pool is known before its plan: it reads the ratios of its
    four keys only (its pipeline's and the pool's, alone and shared), RECENT a key a page,
    not the newest 200 records of every pool; a key still short after a full page is read
    on alone, from where the first page left it."""
    from prefect.client.orchestration import SyncPrefectClient

    pool, pipeline = f"bykey-{uuid.uuid4().hex[:8]}", "bykey-pipeline"
    busy, rare, own = eta_key(pool, True), eta_key(pool, False), eta_key(pool, True, pipeline)
    other = eta_key(f"other-{uuid.uuid4().hex[:8]}", True)
    record([rare], planned_seconds=10.0, actual_seconds=11.0, flow_run_id=None)  # the oldest
    record([rare], planned_seconds=10.0, actual_seconds=12.0, flow_run_id=None)
    for i in range(5 * eta_history.RECENT):  # 40 newer records under the pool's shared key
        record([busy], planned_seconds=10.0, actual_seconds=10.0 + i, flow_run_id=None)
    record([own], planned_seconds=10.0, actual_seconds=15.0, flow_run_id=None)
    record([other], planned_seconds=10.0, actual_seconds=20.0, flow_run_id=None)
    asked = []
    request = SyncPrefectClient.request

    def counted(self, method, path, *args, **kwargs):
        if path == "/artifacts/filter":
            body = kwargs["json"]
            asked.append((len(body["artifacts"]["key"]["any_"]), body["offset"], body["limit"]))
        return request(self, method, path, *args, **kwargs)

    monkeypatch.setattr(SyncPrefectClient, "request", counted)
    found = read_ratios(pool=pool, pipeline=pipeline)
    recent = eta_history.RECENT
    assert found[busy] == [round(1.0 + (5 * recent - 1 - i) / 10, 4) for i in range(recent)]  # its newest
    assert found[own] == [1.5] and found[rare] == [1.2, 1.1] and other not in found
    # the 4 keys' newest 32 rows (the own record and 31 of the pool's); then the 3 keys still
    # short, after the 1 row of theirs read: the rare key's two
    assert asked == [(4, 0, 4 * recent), (3, 1, 3 * recent)]


def test_the_calendars_eta_is_the_planned_makespan_times_the_allowance_as_the_run_goes_on(pool):
    calendar = RunCalendar(str(uuid.uuid4()), "allowed", logging.getLogger("test"))
    now = time.time()
    plan = {"c0": Assignment("c0", POOL, {"cpu": 1}, 0, 0.0, 10.0)}
    try:
        eta = calendar.write("allowed", plan, now, allowed=Allowance(1.5, 4, (eta_key(POOL, False),)))
        calendar.written()
        assert eta == pytest.approx(now + 15.0)
        # later, with 4 s of the plan left: 6 s expected
        assert calendar.expected(now + 10.0, now + 6.0) == pytest.approx(now + 12.0)
        assert calendar.expected(now + 5.0, now + 6.0) == pytest.approx(now + 6.0)  # overdue: now
    finally:
        calendar.delete()


def _newest_record(key: str) -> dict:
    """The data of the newest ETA record under `key` (failing when there is none)."""
    with get_client(sync_client=True) as client:
        rows = client.request(
            "POST",
            "/artifacts/filter",
            json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1},
        ).json()
    assert rows, f"no ratio recorded under {key}"
    return rows[0]["data"]


def slow(x: int = 1) -> int:
    time.sleep(0.3)
    return x


def test_a_completed_run_planned_from_history_leaves_its_ratio_and_the_next_runs_eta_uses_it(pool):
    comp = component(slow, cpu=1, mem_gib=0.01, est_seconds=1.0, pools=[POOL])
    steps = [Step(f"s{i}", comp, after=(f"s{i - 1}",) if i else ()) for i in range(4)]
    run = to_flow(Pipeline("eta-learned", steps, description="4 steps in a row"))
    key, own = eta_key(POOL, shared=False), eta_key(POOL, shared=False, pipeline="eta-learned")
    before = len(read_ratios().get(key, []))
    run(local_pool=POOL)  # planned from the declarations: how late it finished says nothing
    assert len(read_ratios().get(key, [])) == before
    run(local_pool=POOL)  # planned from the first run's durations (4 x 0.3 s): recorded
    ratios = read_ratios()
    assert len(ratios.get(key, [])) == min(before + 1, eta_history.RECENT) and ratios[key][0] > 0
    assert ratios[own][0] == ratios[key][0]  # its pipeline's record too
    data = _newest_record(own)  # against the plan replayed with the durations taken: 4 in a row, >= 0.3 s each
    assert data["replayed_s"] >= 4 * 0.3 and data["ratio"] == pytest.approx(
        data["actual_s"] / data["replayed_s"], rel=1e-3
    )
    third = run(local_pool=POOL)
    with get_client(sync_client=True) as client:
        figures = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(third["flow_run_id"])]),
                key=ArtifactFilterKey(like_="plan-figures"),
            )
        )
    text = "\n".join(str(a.data) for a in figures)[:3000]
    assert "| ETA (expected finish) |" in text and "| planned finish |" in text, text
    assert "the plan's makespan x" in text and "such run(s) on this pool finished" in text, text


def test_a_run_that_starts_before_its_plan_said_does_not_teach_the_next_etas_to_shrink(pool):
    """A run planned behind another run's "running" component that holds nothing (its
    process was killed: its entry stays until it is found silent, minutes) starts at once
    and ends long before its plan. Its ratio was its time over a replay that kept the
    planned start (0.05-0.11 seen), and the next runs on the pool took ETAs of half their
    plans (the allowance's floor). Now the replay starts a step where it began when that
    was earlier: the ratio is the run's own lateness, about 1."""
    from prefect import flow
    from prefect.states import Completed, Running

    from planflow.prefect.calendar_store import CalendarEntry, save_entry
    from planflow.runtime.calendar import read_calendar

    @flow(name="eta-ghost-probe")
    def probe() -> None: ...

    comp = component(slow, cpu=1, mem_gib=0.01, est_seconds=1.0, pools=[POOL])
    steps = [Step(f"s{i}", comp, after=(f"s{i - 1}",) if i else ()) for i in range(4)]
    run = to_flow(Pipeline("eta-early-start", steps, description="4 steps in a row"))
    own = eta_key(POOL, shared=True, pipeline="eta-early-start")
    now = time.time()
    with get_client(sync_client=True) as client:
        ghost = client.create_flow_run(probe, name=f"ghost-{uuid.uuid4().hex[:6]}")
        client.set_flow_run_state(ghost.id, Running(), force=True)
    reservation = {"component": "c", "pool": POOL, "start": now, "finish": now + 120, "state": "running"}
    save_entry(
        CalendarEntry(
            flow_run_id=str(ghost.id),
            pipeline="ghost",
            planned_at=now,
            eta=now + 120,
            reservations=[{**reservation, "demand": dict(CAPACITY)}],
        )
    )
    try:
        assert str(ghost.id) in {e.flow_run_id for e in read_calendar()}  # alive to the calendar
        run(local_pool=POOL)  # planned from the declarations: teaches nothing
        run(local_pool=POOL)  # from the first run's durations, behind the ghost: recorded
        data = _newest_record(own)
        assert data["planned_s"] > 60, data  # planned behind the ghost's two minutes
        assert 0.7 < data["ratio"] < 2.0, data  # was actual / (2 min + its durations): about 0.01
    finally:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(ghost.id, Completed(), force=True)
        assert str(ghost.id) not in {e.flow_run_id for e in read_calendar()}
