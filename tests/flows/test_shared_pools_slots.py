"""Two runs on one pool never wait for each other for ever, and a run waiting to plan
gets the planning slot as soon as it is free (real Prefect server).

Found by the fleet benchmark: each run's one-core step ended and left its slot in the
run's idle lease; each run's next step needed both cores, took the one its lease had
and asked the server for the other, which the other run held the same way. Both waited
until the burst's time ran out. A step refused its missing slots now gives back the
run's idle leases of those limits: one of the two runs gets both cores.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from unittest.mock import patch

import pytest
from prefect.client.orchestration import SyncPrefectClient

from planflow.ops.processes import wait_until
from planflow.prefect.limits import PLANNING_LIMIT, active_slots, limit_name
from planflow.runtime.calendar import CalendarError, planning_lock
from planflow.runtime.dispatch import Assignment, dispatch
from planflow.runtime.run_slots import RunSlots

from tests.flows.own_pool import own_pool

POOL = "fleet-deadlock-duo"
CAPACITY = {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}
CPU = limit_name(POOL, "cpu")


@pytest.fixture(scope="module")
def pool(registered_blocks):
    with own_pool(POOL, CAPACITY) as name:
        yield name


def _settled(read, expected, seconds: float = 10.0) -> bool:
    """Whether `read()` comes to return `expected` within `seconds` (what a thread of the
    run gives back, it gives back a little later)."""
    deadline = time.monotonic() + seconds
    while (seen := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen == expected


def test_two_runs_each_holding_one_core_idle_do_not_wait_for_each_other_for_ever(pool):
    one = [Assignment(f"small-{i}", POOL, {"cpu": 1}, 0) for i in range(2)]
    both = [Assignment(f"big-{i}", POOL, {"cpu": 2}, 0) for i in range(2)]
    with RunSlots() as a, RunSlots() as b:
        for run, step in zip((a, b), one, strict=True):
            held = run.take(step)
            assert held is not None
            held.close()  # the step ended: its core stays in the run's lease, idle
        assert active_slots([CPU]) == {CPU: 2000}
        first = a.take(both[0])  # a has one core, b the other: refused, and a gives its idle core back
        assert first is None
        assert [lease.limit for lease in a._leases] == []
        second = b.take(both[1])  # b now gets the core a gave back
        assert second is not None, "run b still waits for the core run a holds idle"
        second.close()
    assert a.wait_closed() and b.wait_closed()  # the last leases go back after the run, off its path
    assert active_slots([CPU]) == {CPU: 0}


@pytest.mark.parametrize("local_turn", [True, False], ids=["this machine's turn", "no local turn"])
def test_a_run_waiting_to_plan_gets_the_slot_soon_after_it_is_free_and_a_bounded_wait_names_the_limit(
    pool, monkeypatch, local_turn
):
    """Prefect's own wait sleeps the server's Retry-After (up to 30 s once runs queue):
    the planning slot stood free while the runs that wanted it slept. With this machine's
    turn (planning_turn.py) the waiting run asks the server once, when its turn comes;
    without (PLANFLOW_SLOT_WAKE=false, as between machines) it is refused once, then reads
    the slot until it is free."""
    if local_turn:
        monkeypatch.delenv("PLANFLOW_SLOT_WAKE", raising=False)
    else:
        monkeypatch.setenv("PLANFLOW_SLOT_WAKE", "false")
    got = threading.Event()
    asked = []  # per increment of the planning slot: whether the waiting run sent it
    real = SyncPrefectClient.increment_concurrency_slots_with_lease

    def counted(self, *args, **kwargs):
        asked.append(threading.current_thread() is waiter)
        return real(self, *args, **kwargs)

    def second() -> None:
        with planning_lock(30.0):
            got.set()

    waiter = threading.Thread(target=second)
    with patch.object(SyncPrefectClient, "increment_concurrency_slots_with_lease", counted):
        with planning_lock():
            with pytest.raises(CalendarError, match=f"waited 1 s for concurrency limit '{PLANNING_LIMIT}'"):
                with planning_lock(1.0):
                    pass
            waiter.start()
            assert not got.wait(1.5)  # refused while this one holds it
            if not local_turn:  # its first ask made (and refused) before this one lets go, however late it started
                assert wait_until(lambda: True in asked, 30, interval=0.05), "the waiting run never asked"
            freed = time.monotonic()
        waiter.join(30.0)
    assert got.is_set()
    # local turn: asked once, when its turn came; else refused once, then read until free
    # (asked again only then, not every poll)
    assert asked.count(True) == (1 if local_turn else 2)
    # handed over, or polled every 0.3 s (with jitter): taken soon, not a Retry-After later
    assert time.monotonic() - freed < 5.0
    assert active_slots([PLANNING_LIMIT]) == {PLANNING_LIMIT: 0}


def _narrow_steps_keep_the_pool(a: RunSlots, b: RunSlots, wide: Assignment, rounds: int) -> list[str]:
    """Run b keeps the pool busy with one-core steps (each ends and the next starts, twice
    per round) while run a's two-core step asks each round; what each round gave."""
    running = [b.take(Assignment(f"narrow-{i}", POOL, {"cpu": 1}, 0)) for i in range(2)]
    assert all(running), "run b could not start its first two steps"
    seen, n = [], 2
    for _ in range(rounds):
        a.prepare([wide])  # as the dispatcher does before each round: a short step's slots are batched
        held = a.take(wide)
        if held is not None:
            seen.append("wide started")
            held.close()
            break
        for lane in range(2):  # one of b's steps ends, its next one asks
            if running[lane] is not None:
                running[lane].close()
            narrow = Assignment(f"narrow-{n}", POOL, {"cpu": 1}, 0, 0.0, 1.0)
            b.prepare([narrow])
            running[lane] = b.take(narrow)
            n += 1
        seen.append("narrow kept" if any(running) else "narrow waits")
        assert active_slots([CPU])[CPU] <= 2000
    for held in running:
        if held is not None:
            held.close()
    return seen


def test_a_two_core_step_is_not_starved_by_another_runs_one_core_steps(pool, monkeypatch):
    """The fleet benchmark saw a cpu=2 step wait 80 s while other runs' one-core steps took
    each core the moment it came free. Without claims that goes on for ever here; with
    them the wide step takes its pool's turn, the other run takes nothing new there, and
    the wide step starts once the steps that were running have ended."""
    from planflow.prefect.limits import turn_limit
    from planflow.runtime import slot_claims

    wide = Assignment("wide", POOL, {"cpu": 2}, 0, 0.0, 1.0)  # planned short: batched by prepare
    monkeypatch.setattr(slot_claims, "CLAIM_AFTER_SECONDS", 1e9)  # claims off: the starvation
    with RunSlots() as a, RunSlots() as b:
        assert "wide started" not in _narrow_steps_keep_the_pool(a, b, wide, rounds=6)
    # the first pair's slots given back (their release threads; seconds on a loaded machine)
    # before the second pair asks: else its first two steps met a pool still full
    assert a.wait_closed() and b.wait_closed()
    assert _settled(lambda: active_slots([CPU]), {CPU: 0})
    monkeypatch.setattr(slot_claims, "CLAIM_AFTER_SECONDS", 0.0)  # claims on (after 0 s of refusals)
    monkeypatch.setattr(slot_claims, "TURN_LOOK_SECONDS", 0.0)  # each take looks at the turn (rounds here take ms)
    with RunSlots() as a, RunSlots() as b:
        seen = _narrow_steps_keep_the_pool(a, b, wide, rounds=8)
        # claimed at its first refusal, b takes nothing new from then on; wide starts once
        # b's two steps have given their cores back (b's release thread: a round or more
        # on a loaded machine)
        assert seen[0] == "narrow waits" and seen[-1] == "wide started", seen
        # the turn given back at its start (by the run's release thread, off the step's path)
        assert _settled(lambda: active_slots([turn_limit(POOL)]), {turn_limit(POOL): 0})
    assert a.wait_closed() and b.wait_closed()
    assert active_slots([CPU, turn_limit(POOL)]) == {CPU: 0, turn_limit(POOL): 0}


def test_a_step_first_in_its_pool_s_order_claims_at_once_and_a_later_one_yields(pool, monkeypatch):
    """The calendar's order is the pool's priority: a step that no other run's waiting
    step comes before (RunSlots.first_on, run_calendar.RunCalendar.first_on) claims the
    pool's turn at its first refusal; a step with one waiting ahead of it does not (it
    would take the turn from it), until refused for YIELD_SECONDS."""
    from planflow.prefect.limits import turn_limit
    from planflow.runtime import slot_claims

    wide = Assignment("wide", POOL, {"cpu": 2}, 0, 0.0, 1.0)
    monkeypatch.setattr(slot_claims, "CLAIM_AFTER_SECONDS", 0.0)  # what a run without a calendar would do
    monkeypatch.setattr(slot_claims, "YIELD_SECONDS", 1e9)
    monkeypatch.setattr(slot_claims, "TURN_LOOK_SECONDS", 0.0)
    with RunSlots() as a, RunSlots() as b:
        a.first_on = lambda name, step: False  # another run's step before a's waits for the pool
        assert set(_narrow_steps_keep_the_pool(a, b, wide, rounds=4)) == {"narrow kept"}
    assert a.wait_closed() and b.wait_closed()
    for first_on, yield_seconds in ((lambda name, step: name == POOL, 1e9), (lambda name, step: False, 0.0)):
        monkeypatch.setattr(slot_claims, "YIELD_SECONDS", yield_seconds)  # 0: it waited long enough
        with RunSlots() as a, RunSlots() as b:
            a.first_on = first_on
            seen = _narrow_steps_keep_the_pool(a, b, wide, rounds=8)
            # claimed at its first refusal: b takes nothing new from the first round on, and
            # wide starts once b's slots are back on the server (given back by b's release thread)
            assert seen[0] == "narrow waits" and seen[-1] == "wide started", seen
        assert a.wait_closed() and b.wait_closed()
        assert active_slots([CPU, turn_limit(POOL)]) == {CPU: 0, turn_limit(POOL): 0}


def test_a_claim_gives_the_turn_back_when_a_component_before_it_comes_to_wait(pool, monkeypatch, caplog):
    """A step that claimed while first in its pool's order gives the turn and the slots it
    claimed back once another run's component before it waits there (first_on turns
    False); a claim forced by a long wait does not. Each is said in the run's log."""
    from planflow.prefect.limits import turn_limit
    from planflow.runtime import slot_claims

    monkeypatch.setattr(slot_claims, "TURN_LOOK_SECONDS", 0.0)
    monkeypatch.setattr(slot_claims, "YIELD_SECONDS", 1e9)
    wide = Assignment("wide", POOL, {"cpu": 2}, 0)
    hog = RunSlots()
    caplog.set_level(logging.INFO, logger="test-run-log")
    with hog, RunSlots(log=logging.getLogger("test-run-log")) as a:
        first = {"now": True}
        a.first_on = lambda name, step: first["now"]
        held = [hog.take(Assignment(f"hog-{i}", POOL, {"cpu": 1}, 0)) for i in range(2)]
        assert all(held)
        assert a.take(wide) is None  # refused: first in the order, it claims at once
        assert active_slots([turn_limit(POOL)]) == {turn_limit(POOL): 1}
        held[0].close()
        hog.prepare([])  # the hog's idle core goes back to the server (its release thread)
        deadline = time.monotonic() + 10
        while active_slots([CPU])[CPU] > 1000 and time.monotonic() < deadline:
            time.sleep(0.05)
        while a.take(wide) is None and active_slots([CPU])[CPU] < 2000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert active_slots([CPU])[CPU] == 2000, "the claim did not take the freed core"
        first["now"] = False  # another run's component before it in the order now waits
        assert a.take(wide) is None
        assert active_slots([CPU, turn_limit(POOL)]) == {CPU: 1000, turn_limit(POOL): 0}  # turn and core given back
        monkeypatch.setattr(slot_claims, "YIELD_SECONDS", 0.0)  # refused long enough: it claims all the same
        assert a.take(wide) is None and active_slots([turn_limit(POOL)]) == {turn_limit(POOL): 1}
        assert a.take(wide) is None and active_slots([turn_limit(POOL)]) == {turn_limit(POOL): 1}  # forced: kept
        held[1].close()
    assert hog.wait_closed() and a.wait_closed()
    assert active_slots([CPU, turn_limit(POOL)]) == {CPU: 0, turn_limit(POOL): 0}
    said = [r.getMessage() for r in caplog.records if r.name == "test-run-log"]
    assert said == [
        f"step 'wide' waits for its slots on pool '{POOL}': it claims them as they come free "
        "(first in the pool's order)",
        f"step 'wide' gives its claim on pool '{POOL}' back: another run's component before it waits there",
        f"step 'wide' waits for its slots on pool '{POOL}': it claims them as they come free "
        "(after a long wait, though another run's component before it waits)",
    ]


def _dispatch_one_waiting(b: RunSlots, step: Assignment, started: threading.Event) -> threading.Thread:
    """Run b's dispatcher over one step, in a thread: `started` is set when it starts."""

    def start(name: str, outputs: dict) -> Future:
        started.set()
        future: Future = Future()
        future.set_result(None)
        return future

    capacity = {POOL: CAPACITY}
    thread = threading.Thread(target=dispatch, args=({step.step: ()}, {step.step: step}, capacity, start, None, b))
    thread.start()
    return thread


@pytest.mark.parametrize("wake", [True, False], ids=["wake-up", "poll-only"])
def test_a_waiting_run_asks_again_as_soon_as_a_run_on_this_machine_gives_its_slots_back(pool, monkeypatch, wake):
    """Slots given back wake the dispatcher of a run on the same machine waiting for them
    (slot_wake.py): it asks again then, not at its next poll. Here the poll is 8 s (at
    least 6.4 s with its jitter), so a start within 5 s of the give-back is the wake-up's;
    with PLANFLOW_SLOT_WAKE=false the run still waits for its poll."""
    monkeypatch.setenv("PLANFLOW_SLOT_WAKE", "true" if wake else "false")
    whole = Assignment("whole", POOL, {"cpu": 2}, 0)
    started = threading.Event()
    with RunSlots() as a, RunSlots() as b:
        b.poll_seconds = 8.0  # without a wake-up, b asks again 6.4-9.6 s after its refusal
        held = a.take(whole)
        assert held is not None
        waiter = _dispatch_one_waiting(b, Assignment("next", POOL, {"cpu": 2}, 0), started)
        assert _settled(lambda: bool(b._wanting), True), "run b's step was never refused"
        held.close()  # a's step ended: its lease is idle in run a
        a.prepare([])  # a's next round needs nothing: the release thread gives the lease back
        if wake:
            assert started.wait(5.0), "run b did not ask again when run a gave the pool back"
        else:
            assert _settled(lambda: active_slots([CPU]), {CPU: 0})
            assert not started.wait(3.0), "run b started before its poll without a wake-up"
            assert started.wait(20.0)  # at its poll
        waiter.join(10.0)
    assert a.wait_closed() and b.wait_closed()
    assert active_slots([CPU]) == {CPU: 0}


def test_a_step_that_a_limit_made_smaller_can_never_fit_fails_naming_the_limit_and_the_fix(pool, monkeypatch):
    """The limit changed by hand while a two-core step waits (`prefect gcl update ... --limit
    1000`): it failed only at the end of the whole wait, saying it claims slots as they come."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from planflow.runtime import run_slots
    from planflow.runtime.admission import AdmissionError

    monkeypatch.setattr(run_slots, "SIZE_CHECK_SECONDS", 0.0)
    big = [Assignment(f"big-{i}", POOL, {"cpu": 2}, 0) for i in range(2)]
    with RunSlots() as a, RunSlots() as b, get_client(sync_client=True) as client:
        held = a.take(big[0])
        assert held is not None
        try:
            assert b.take(big[1]) is None  # waits for a's two cores
            client.update_global_concurrency_limit(CPU, GlobalConcurrencyLimitUpdate(limit=1000))
            deadline, failed = time.monotonic() + 15, None
            while failed is None and time.monotonic() < deadline:
                try:
                    assert b.take(big[1]) is None
                except AdmissionError as exc:
                    failed = exc
                time.sleep(0.2)
            assert failed is not None, "the step waited on for a limit it can never fit"
            message = str(failed)
            assert f"needs 2000 slots of limit {CPU}, but the limit now holds 1000 in all" in message, message
            assert "Fix: planflow pools sync" in message
        finally:
            client.update_global_concurrency_limit(CPU, GlobalConcurrencyLimitUpdate(limit=2000))
            held.close()
    assert a.wait_closed() and b.wait_closed()


def test_a_run_does_not_reuse_its_held_slots_past_a_limit_made_smaller(pool, monkeypatch):
    """The pool resized to fewer cores while a run holds them (`planflow pools set`): the
    run reused its held slots for its next steps without asking the server and ran them
    over the pool's new size (a trial: two cpu=1 steps on a pool set to cpu=0.5). Now a
    reuse checks the limit's size (once the run is REUSE_CHECK_SECONDS old): a step larger
    than the new size fails naming it; a smaller one gives the idle slots back and asks."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from planflow.runtime import run_slots
    from planflow.runtime.admission import AdmissionError

    monkeypatch.setattr(run_slots, "REUSE_CHECK_SECONDS", 0.0)
    whole, again, half = (
        Assignment(name, POOL, {"cpu": cpu, "mem_gib": 1}, 0) for name, cpu in (("a", 2), ("b", 2), ("c", 1))
    )
    with RunSlots() as run, get_client(sync_client=True) as client:
        held = run.take(whole)
        assert held is not None
        try:
            client.update_global_concurrency_limit(CPU, GlobalConcurrencyLimitUpdate(limit=1000))
            held.close()  # its two cores idle in the run, on a limit of one
            reads = run.reads
            with pytest.raises(AdmissionError) as refused:
                run.take(again)
            assert run.reads - reads == 1  # cores and memory checked with one read of the pool
            assert f"needs 2000 slots of limit {CPU}, but the limit now holds 1000 in all" in str(refused.value)
            assert _settled(lambda: active_slots([CPU]), {CPU: 0})  # the idle slots went back to the server
            deadline, smaller = time.monotonic() + 15, None
            while smaller is None and time.monotonic() < deadline:  # one core: granted by the server
                smaller = run.take(half)
                time.sleep(0.2)
            assert smaller is not None, "a step within the new size never got its slots"
            assert active_slots([CPU]) == {CPU: 1000}
            smaller.close()
        finally:
            client.update_global_concurrency_limit(CPU, GlobalConcurrencyLimitUpdate(limit=2000))
    assert run.wait_closed()
    assert _settled(lambda: active_slots([CPU]), {CPU: 0})
