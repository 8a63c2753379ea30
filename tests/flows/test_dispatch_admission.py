"""The dispatcher's `admit` hook (slots shared with other runs), with a stand-in for the
Prefect limits (the real ones are in test_shared_pools.py): a refused step waits and is
tried again; admission that gives up fails the step and nothing stays held."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from uuid import uuid4

import httpx
import pytest

from planflow.runtime import run_leases, run_slots
from planflow.runtime.dispatch import AdmitWhen, Assignment, dispatch

CAPACITY = {"p": {"cpu": 2, "gpu": 0, "mem_gib": 4}}


class FakeLimits:
    """Stand-in for the server's limits: `free` cpu, refusals counted, holders tracked."""

    def __init__(self, free: float) -> None:
        self.free, self.refused, self.lock = free, 0, threading.Lock()

    def take(self, a: Assignment) -> ExitStack | None:
        with self.lock:
            need = a.demand.get("cpu", 0)
            if need > self.free:
                self.refused += 1
                return None
            self.free -= need
        stack = ExitStack()
        stack.callback(self._give_back, need)
        return stack

    def _give_back(self, need: float) -> None:
        with self.lock:
            self.free += need


def test_a_step_refused_by_the_shared_limits_waits_and_starts_once_they_have_room():
    limits = FakeLimits(free=2)
    upstream = {"a": (), "b": ()}
    assignments = {n: Assignment(n, "p", {"cpu": 1}, i) for i, n in enumerate(upstream)}
    other = limits.take(Assignment("other", "p", {"cpu": 1}, 0))  # another run holds one of the two cpus
    threading.Timer(1.0, other.close).start()  # the other run ends after a second
    with ThreadPoolExecutor(max_workers=2) as executor:
        records, ledger = dispatch(
            upstream, assignments, CAPACITY, lambda n, o: executor.submit(time.sleep, 1.5), admit=limits.take
        )
    assert [records[n].state for n in "ab"] == ["Completed", "Completed"]
    assert limits.refused >= 1 and records["b"].started >= 0.9  # b waited for the other run
    assert limits.free == 2  # everything given back


def test_admission_that_gives_up_fails_the_step_and_the_run_holds_nothing():
    limits = FakeLimits(free=2)

    def admit(a: Assignment):
        if a.step == "b":
            raise TimeoutError("waited too long for slots")
        return limits.take(a)

    upstream = {"a": (), "b": ("a",), "c": ("b",)}
    assignments = {n: Assignment(n, "p", {"cpu": 1}, i) for i, n in enumerate(upstream)}
    with ThreadPoolExecutor(max_workers=2) as executor:
        records, _ = dispatch(upstream, assignments, CAPACITY, lambda n, o: executor.submit(str, n), admit=admit)
    assert [records[n].state for n in "abc"] == ["Completed", "Failed", "Skipped"]
    assert str(records["b"].error) == "waited too long for slots"
    assert limits.free == 2


class PacedLimits(FakeLimits):
    """FakeLimits with the hooks RunSlots has: a pace and a `prepare` that hears each round."""

    poll_seconds = 0.05

    def __init__(self, free: float) -> None:
        super().__init__(free)
        self.prepared: list[set[str]] = []

    def __call__(self, a: Assignment) -> ExitStack | None:  # the admission itself, as RunSlots is
        return self.take(a)

    def prepare(self, ready) -> None:
        self.prepared.append({a.step for a in ready})


def test_admission_held_to_a_condition_keeps_the_pace_and_prepares_only_the_steps_it_lets_ask():
    """The calendar's hold (run_calendar.RunCalendar.admit): a step asks only when it is due.
    The wrapped admission keeps its own pace and its batching sees only the due steps, so it
    takes no slots ahead of the calendar."""
    limits = PacedLimits(free=2)
    opened = threading.Event()
    threading.Timer(0.5, opened.set).start()  # "b" is due half a second in
    admit = AdmitWhen(limits, lambda a: a.step == "a" or opened.is_set())
    assert admit.poll_seconds == limits.poll_seconds
    upstream = {"a": (), "b": ()}
    assignments = {n: Assignment(n, "p", {"cpu": 1}, i) for i, n in enumerate(upstream)}
    with ThreadPoolExecutor(max_workers=2) as executor:
        records, _ = dispatch(
            upstream, assignments, CAPACITY, lambda n, o: executor.submit(time.sleep, 0.1), admit=admit
        )
    assert [records[n].state for n in "ab"] == ["Completed", "Completed"]
    assert records["a"].started < 0.3 <= records["b"].started  # b waited for its turn, a did not
    assert limits.prepared[0] == {"a"} and {"b"} in limits.prepared  # never "b" before it was due
    assert all("b" not in seen for seen in limits.prepared[: limits.prepared.index({"b"})])
    assert limits.refused == 0 and limits.free == 2


def test_the_dispatcher_reads_admit_s_pace_each_round_and_a_claiming_run_asks_more_often():
    """A step that claims its pool's slots holds the other runs back: the run asks for the
    freed slots more often meanwhile (RunSlots.poll_seconds), through AdmitWhen too; and
    the dispatcher takes the pace anew each time it waits."""
    from planflow.runtime.run_slots import RunSlots
    from planflow.runtime.slot_claims import CLAIM_POLL_SECONDS

    slots = RunSlots()
    held_back = AdmitWhen(slots, lambda a: True)
    usual = slots.poll_seconds
    assert usual > CLAIM_POLL_SECONDS and held_back.poll_seconds == usual
    slots._claims._by_pool["p"] = object()  # a step of the run claims pool p
    assert slots.poll_seconds == held_back.poll_seconds == CLAIM_POLL_SECONDS
    slots._claims._by_pool.clear()
    assert held_back.poll_seconds == usual

    class Pace:
        """Refuses the first ask, then admits; its pace changes after the first wait."""

        def __init__(self) -> None:
            self.poll_seconds, self.asked = 5.0, []

        def __call__(self, a: Assignment) -> ExitStack | None:
            self.asked.append(time.monotonic())
            if len(self.asked) == 1:
                self.poll_seconds = 0.05  # read when the dispatcher waits: the 5 s is never waited
                return None
            return ExitStack()

    pace = Pace()
    with ThreadPoolExecutor(max_workers=1) as executor:
        records, _ = dispatch(
            {"a": ()},
            {"a": Assignment("a", "p", {"cpu": 1}, 0)},
            CAPACITY,
            lambda n, o: executor.submit(int),
            admit=pace,
        )
    assert records["a"].state == "Completed" and len(pace.asked) == 2
    # read once at the start, the pace would have made it wait at least 4 s (5 s, jitter 0.8-1.2)
    assert pace.asked[1] - pace.asked[0] < 4.0, "the dispatcher waited at a pace admit no longer had"


def test_run_slots_tell_which_step_was_refused_its_slots():
    """The dispatcher's call names each refused step to `on_refused` (the pool calendar
    marks it waiting, run_calendar.RunCalendar.waiting); a step given its slots is not named."""
    from planflow.runtime.run_slots import RunSlots

    slots, told = RunSlots(), []
    slots.on_refused = told.append
    slots.take = lambda a: None if a.step == "refused" else ExitStack()
    assert slots(Assignment("refused", "p", {"cpu": 1}, 0)) is None
    assert slots(Assignment("given", "p", {"cpu": 1}, 0)) is not None
    assert told == ["refused"]


def test_steps_that_ended_together_are_all_seen_before_the_next_round():
    """Two steps that ended while the dispatcher was busy (here: before it listened at all)
    are both taken in before its next round, which releases what waited for the pair; one
    round per ended step made the second wait for the first's round (with RunSlots, a
    round of server requests) with its slots idle."""

    def ended_already(step: str, outputs: dict) -> Future:
        future: Future = Future()
        future.set_result(step)
        return future

    limits = PacedLimits(free=2)
    upstream = {"a": (), "b": (), "c": ("a", "b")}
    assignments = {n: Assignment(n, "p", {"cpu": 1}, i) for i, n in enumerate(upstream)}
    records, _ = dispatch(upstream, assignments, CAPACITY, ended_already, admit=limits)
    assert [records[n].state for n in "abc"] == ["Completed"] * 3
    assert limits.prepared == [{"a", "b"}, {"c"}], limits.prepared
    assert limits.free == 2


def test_every_lease_goes_back_at_a_run_s_end_though_one_give_back_fails(monkeypatch, caplog):
    """At a run's end (and on the release thread) the leases are given back side by side;
    one the server does not take back is logged, saying when (its slots return when it runs
    out), and the others still go back. The dispatcher's own give-backs (a refused step's
    idle leases, before it waits) raise instead."""
    given: list[str] = []

    def release(lease_id, limit: str, slots: int) -> None:
        if limit == "gone":
            raise httpx.ConnectError("the server went away")
        given.append(limit)

    monkeypatch.setattr(run_leases, "_release", release)
    slots = run_slots.RunSlots()
    leases = [run_leases.Lease(uuid4(), name, 1, 1) for name in ("gone", "cpu", "mem")]
    with caplog.at_level(logging.WARNING, logger="planflow.admission"):
        slots._release_all(leases, warn_when="at the run's end")
        slots._release_all(leases[:1], warn_when="after its step")
    assert sorted(given) == ["cpu", "mem"]
    assert "a lease was not given back at the run's end (the server went away)" in caplog.text
    assert "a lease was not given back after its step (the server went away)" in caplog.text
    for some in (leases[:1], leases):
        with pytest.raises(httpx.ConnectError):
            slots._release_all(some)
