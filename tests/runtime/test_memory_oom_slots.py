"""A run again with more memory takes the larger memory from its pool's shared slots
(the Prefect global concurrency limits every run shares) before it starts, and gives it
back after; while other runs hold it, it waits, bounded."""

from __future__ import annotations

import uuid

import pytest
from prefect.client.orchestration import get_client

from planflow.prefect.limits import active_slots, limit_name, pool_limits, slots, sync_limits
from planflow.runtime.admission import AdmissionError, SharedSlots
from planflow.runtime.dispatch import Assignment, ResourceLedger
from planflow.runtime.oom_next import extra_demand, more_slots

CAPACITY = {"cpu": 2.0, "gpu": 0.0, "mem_gib": 1.0}


@pytest.fixture
def pool(registered_blocks):
    name = f"oomslots-{uuid.uuid4().hex[:6]}"
    sync_limits({name: CAPACITY})
    yield name
    with get_client(sync_client=True) as client:
        for limit in pool_limits(name, CAPACITY):
            client.delete_global_concurrency_limit_by_name(limit)


def test_the_extra_memory_is_what_the_dispatcher_does_not_hold():
    a = Assignment("hungry", "docker", {"cpu": 0.5, "mem_gib": 0.25}, 0)
    assert extra_demand(a, "docker", 0.5) == {"mem_gib": 0.25}
    assert extra_demand(a, "big", 1.0) == {"cpu": 0.5, "mem_gib": 1.0}  # another pool: all of it there


def test_a_run_again_holds_its_larger_memory_in_the_shared_slots(pool):
    a = Assignment("hungry", pool, {"cpu": 0.5, "mem_gib": 0.25}, 0)
    mem = limit_name(pool, "mem_gib")
    ledger = ResourceLedger({pool: CAPACITY})  # the run's own, as the dispatcher holds it
    ledger.acquire(pool, a.demand)
    with more_slots(a, pool, 0.5, ledger=ledger) as extra:
        assert extra == 0.25
        assert active_slots([mem])[mem] == slots("mem_gib", 0.25)
        assert ledger.in_use[pool]["mem_gib"] == 0.5 and not ledger.fits(pool, {"mem_gib": 0.75})
    assert active_slots([mem])[mem] == 0 and ledger.in_use[pool]["mem_gib"] == 0.25

    other = SharedSlots().take(Assignment("other-run", pool, {"mem_gib": 0.75}, 0))  # another run holds 0.75 GiB
    assert other is not None
    with other, pytest.raises(AdmissionError, match=r"waited \d+ s for \d+ slots of " + mem):
        with more_slots(a, pool, 0.75, slots=SharedSlots(wait_seconds=1)):  # needs 0.5 more: only 0.25 free
            pytest.fail("ran without its memory")
    assert active_slots([mem])[mem] == 0  # nothing held after the wait gave up


def test_a_run_again_up_to_the_whole_pool_fits_to_the_slot_and_one_that_cannot_fit_fails_at_once():
    # learned 0.4873 GiB (499 MiB slots, rounded up), again with 0.5 GiB on a 0.5 GiB pool:
    # the extra is the 13 slots left, not a rounded-up 14 that would wait for ever
    a = Assignment("hungry", "docker", {"cpu": 1.0, "mem_gib": 0.4873}, 0)
    extra = extra_demand(a, "docker", 0.5)
    assert slots("mem_gib", 0.4873) + slots("mem_gib", extra["mem_gib"]) == slots("mem_gib", 0.5) == 512
    ledger = ResourceLedger({"docker": {"cpu": 2.0, "gpu": 0.0, "mem_gib": 0.5}})
    ledger.acquire("docker", a.demand)
    assert ledger.fits("docker", extra)
    with pytest.raises(AdmissionError, match=r"cannot run again on pool 'docker'.*mem_gib 0\.6\d* > 0\.5"):
        with more_slots(a, "docker", 0.6, ledger=ledger):  # more than the pool has, beside itself
            pytest.fail("ran without its memory")
    assert ledger.in_use["docker"]["mem_gib"] == pytest.approx(0.4873)
