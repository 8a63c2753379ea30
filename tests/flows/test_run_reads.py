"""A run takes the planning slot beside its other reads, and its calendar entry is saved
once its first slots were asked for, while its first components start (real Prefect
server): the slot always goes back, and a save that failed fails the run naming it: no
component starts after it, and nothing stays held."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest

from planflow import to_flow
from planflow.core.component import component
from planflow.core.pipeline import Pipeline, Step
from planflow.prefect.limits import PLANNING_LIMIT, active_slots, limit_name
from planflow.runtime.calendar import CalendarError, read_calendar
from planflow.runtime.dispatch import Assignment
from planflow.runtime.run_calendar import RunCalendar
from planflow.runtime.run_reads import read_for_run
from planflow.runtime.runner import PipelineRunError

from tests.flows.own_pool import own_pool

POOL = "run-reads"
CAPACITY = {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}
RAN: list[str] = []


def noted(x: int = 1) -> int:
    RAN.append(threading.current_thread().name)
    return x


@pytest.fixture(scope="module")
def pool(registered_blocks):
    with own_pool(POOL, CAPACITY) as name:
        yield name


def pipeline(name: str, n: int = 2) -> Pipeline:
    comp = component(noted, cpu=1, mem_gib=0.01, est_seconds=0.05, pools=[POOL])
    return Pipeline(name, [Step(f"c{i}", comp) for i in range(n)], description="trivial components")


def held_planning() -> int:
    return active_slots([PLANNING_LIMIT])[PLANNING_LIMIT]


def test_the_planning_slot_taken_with_the_reads_is_held_until_closed_and_goes_back_when_a_read_fails(pool):
    reads = read_for_run(pipeline("reads-ok"), "plan", "inprocess", POOL, {}, False, None, True, lock_calendar=True)
    try:
        assert held_planning() == 1
        assert isinstance(reads.calendar, list)  # read under the slot
        assert reads.pools[0].keys() == {POOL} and reads.limits is not None and reads.inputs is not None
    finally:
        assert reads.planning is not None
        reads.planning.close()
    assert held_planning() == 0

    with pytest.raises(ValueError, match="pool 'no-such-pool': no ResourcePool block of that name"):
        read_for_run(pipeline("reads-bad"), "plan", "inprocess", "no-such-pool", {}, False, None, True, True)
    assert held_planning() == 0  # the slot, taken beside the read that failed, went back


def test_a_calendar_entry_deleted_while_its_first_save_is_on_the_way_is_not_left_behind(pool, monkeypatch):
    slow = threading.Event()
    save = RunCalendar._save

    def slow_save(self):
        slow.set()
        time.sleep(0.5)  # the save is out when the run ends
        save(self)

    monkeypatch.setattr(RunCalendar, "_save", slow_save)
    run_id = str(uuid.uuid4())
    calendar = RunCalendar(run_id, "slow-save", logging.getLogger("test"))
    given_back = threading.Event()
    calendar.write("slow-save", {"c0": Assignment("c0", POOL, {"cpu": 1}, 0, 0.0, 1.0)}, time.time(), given_back.set)
    assert slow.wait(5.0)
    calendar.delete()  # waits for the save, then deletes what it saved
    assert given_back.is_set()
    assert all(e.flow_run_id != run_id for e in read_calendar(clean=False))


def test_a_run_whose_calendar_entry_cannot_be_saved_fails_naming_it_with_nothing_run_or_held(pool, monkeypatch):
    def refused(self):
        raise CalendarError("the server refused the entry (test)")

    monkeypatch.setattr(RunCalendar, "_save", refused)
    RAN.clear()
    run = to_flow(pipeline("entry-refused", n=4))  # two rounds of two: the pool holds two at once
    with pytest.raises(PipelineRunError, match=r"CalendarError: the server refused the entry \(test\)"):
        run(local_pool=POOL)
    assert len(RAN) <= 2  # the first round's components start beside the save; none after it failed
    assert held_planning() == 0
    cpu = limit_name(POOL, "cpu")
    deadline = time.monotonic() + 30.0  # the first slots go back off the run's path
    while active_slots([cpu])[cpu] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert active_slots([cpu])[cpu] == 0


def test_a_run_on_a_server_without_the_planning_limit_creates_it_and_plans(pool):
    """A new server has no limits: the run's reads find no planning slot to take, the run
    creates the limits (require_limits) and takes the slot then."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(PLANNING_LIMIT)
    RAN.clear()
    summary = to_flow(pipeline("planning-limit-missing"))(local_pool=POOL)
    assert {s["state"] for s in summary["steps"].values()} == {"Completed"}
    assert len(RAN) == 2
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(PLANNING_LIMIT).limit == 1
    assert held_planning() == 0


def test_a_call_refused_before_its_runs_body_gives_back_the_planning_slot_its_early_reads_took(pool):
    """A called flow takes the planning slot while Prefect creates its run (early_reads.py):
    a call whose parameters Prefect refuses never reaches the body that would give it back."""
    from prefect.exceptions import ParameterTypeError

    RAN.clear()
    with pytest.raises(ParameterTypeError, match="policy"):
        to_flow(pipeline("refused-call"))(local_pool=POOL, policy="no-such-policy")
    assert RAN == []
    assert held_planning() == 0


FAILED_ONCE: list[str] = []


def fails_once(x: int = 1) -> int:
    if not FAILED_ONCE:
        FAILED_ONCE.append("failed")
        raise RuntimeError("the first attempt fails (test)")
    return x


def test_a_retried_called_run_reads_again_and_holds_the_planning_slot_once(pool):
    """The early reads go to the run's first attempt; its retry takes the slot and reads itself."""
    FAILED_ONCE.clear()
    comp = component(fails_once, cpu=1, mem_gib=0.01, est_seconds=0.05, pools=[POOL])
    run = to_flow(Pipeline("retried-call", [Step("c0", comp)], retries=1))
    summary = run(local_pool=POOL)
    assert FAILED_ONCE == ["failed"]
    assert summary["steps"]["c0"]["state"] == "Completed"
    assert held_planning() == 0
