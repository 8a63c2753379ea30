"""Slots handed from one run to the next on this machine without a request (spare_leases.py),
against a real Prefect server: the server's count never drops below what the runs use,
and a lease nobody takes over goes back to the server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from uuid import uuid4

import pytest

from planflow.ops.processes import wait_until
from planflow.prefect.limits import active_slots, limit_name
from planflow.runtime import spare_leases
from planflow.runtime.dispatch import Assignment
from planflow.runtime.run_slots import RunSlots
from planflow.runtime.spare_leases import Spare

from tests.flows.own_pool import own_pool

POOL = "spare-duo"
CPU, MEM = limit_name(POOL, "cpu"), limit_name(POOL, "mem_gib")


@pytest.fixture(scope="module")
def pool(registered_blocks):
    with own_pool(POOL, {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}) as name:
        yield name


def left_here(limit: str) -> list[Spare]:
    folder = spare_leases.spares_folder()
    assert folder is not None, "no private folder for this user's runs (PLANFLOW_SLOT_WAKE=false?)"
    return [s for s in map(spare_leases.parse, os.listdir(folder)) if s is not None and s.limit == limit]


def test_a_lease_given_back_is_taken_over_by_this_machines_next_run_without_a_request(pool):
    """Run a's component ends and its run gives the lease back: left here, still held on the
    server; run b's component takes it over (no increment, the server's count unchanged).
    b gives it back and nobody takes it: it goes back to the server LINGER_SECONDS later."""
    one_core = {"cpu": 1}
    with RunSlots() as a, RunSlots() as b:
        held = a.take(Assignment("a1", POOL, one_core, 0))
        assert held is not None and a.requests == 1
        held.close()
        a.prepare([])  # a's next round needs nothing: its idle lease goes (its release thread)
        assert wait_until(lambda: left_here(CPU), timeout=10, interval=0.02), "the lease was not left here"
        assert active_slots([CPU]) == {CPU: 1000}  # still held on the server, by this machine
        took = b.take(Assignment("b1", POOL, one_core, 0))
        assert took is not None
        assert (b.requests, b.handed_over) == (0, 1)
        assert active_slots([CPU]) == {CPU: 1000} and not left_here(CPU)
        took.close()
        b.prepare([])
        assert wait_until(lambda: active_slots([CPU]) == {CPU: 0}, timeout=10), "nobody took it: back to the server"
        assert not left_here(CPU)
    assert a.wait_closed() and b.wait_closed()
    assert active_slots([CPU, MEM]) == {CPU: 0, MEM: 0}


def test_a_step_refused_part_of_its_slots_takes_nothing_over_and_holds_nothing(pool, monkeypatch):
    """All or none still: b's step could take over the core a left, but the memory a holds
    is not free: b's read at hand (a's takes heard) says so, and it asks nothing; it takes
    nothing over (the server's part comes first) and waits holding nothing, and the core
    reaches the server after the linger. The read stands long enough for a slow machine."""
    from planflow.runtime import run_slots

    monkeypatch.setattr(run_slots, "SEEN_WOKEN_SECONDS", 30.0)
    with RunSlots() as a, RunSlots() as b:
        core = a.take(Assignment("a1", POOL, {"cpu": 1}, 0))
        mem = a.take(Assignment("a2", POOL, {"mem_gib": 4}, 0))
        assert core is not None and mem is not None
        core.close()
        a.prepare([Assignment("a3", POOL, {"mem_gib": 4}, 0)])  # the core goes, the memory stays
        assert wait_until(lambda: left_here(CPU), timeout=10, interval=0.02)
        assert b.take(Assignment("b1", POOL, {"cpu": 1, "mem_gib": 1}, 0)) is None
        assert (b.requests, b.refusals, b.handed_over) == (0, 0, 0) and not b._leases
        assert wait_until(lambda: active_slots([CPU]) == {CPU: 0}, timeout=10)
        mem.close()
    assert a.wait_closed() and b.wait_closed()
    assert active_slots([CPU, MEM]) == {CPU: 0, MEM: 0}


def test_a_lease_left_by_a_run_that_died_is_never_taken_over_and_its_file_goes(pool):
    """A file left longer ago than ADOPT_WITHIN_SECONDS is its runner's to take back: never
    taken over (had its process died, its lease would have run out on the server); one of a
    process that is gone is removed by the next look. A fresh one of a live process is taken."""
    folder = spare_leases.spares_folder()
    assert folder is not None
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    now = time.time()
    old_dead = Spare(CPU, 1000, uuid4(), now - 5, now - 5, now - 5, gone.pid)
    old_alive = Spare(CPU, 1000, uuid4(), now - 5, now - 5, now - 5, os.getpid())
    fresh = Spare(CPU, 1000, uuid4(), now, now, now, os.getpid())
    for spare in (old_dead, old_alive, fresh):
        (folder / spare.file_name).touch(mode=0o600)
    assert [s.lease_id for s in spare_leases.adopt(CPU, 1000)] == [fresh.lease_id]
    names = set(os.listdir(folder))
    assert old_dead.file_name not in names and old_alive.file_name in names
    assert spare_leases.reclaim(old_alive) and not spare_leases.reclaim(fresh)


def test_a_lease_is_taken_over_only_whole_and_only_as_large_as_the_step_misses(pool):
    """A lease cannot be split on the server: a step that misses 1 core does not take over a
    lease of 2 (it would hold a core it does not use); one that misses 2 takes two of 1."""
    folder = spare_leases.spares_folder()
    assert folder is not None
    now = time.time()
    two = Spare(CPU, 2000, uuid4(), now, now, now, os.getpid())
    ones = [Spare(CPU, 1000, uuid4(), now, now, now, os.getpid()) for _ in range(2)]
    for spare in (two, *ones):
        (folder / spare.file_name).touch(mode=0o600)
    try:

        def ids(most: int) -> set:
            return {s.lease_id for s in spare_leases.adopt(CPU, most)}

        first = ids(1000)
        assert len(first) == 1 and first < {o.lease_id for o in ones}
        assert ids(1500) == {o.lease_id for o in ones} - first
        assert ids(1000) == set()
        assert ids(2000) == {two.lease_id}
    finally:
        for spare in (two, *ones):
            spare_leases.reclaim(spare)
