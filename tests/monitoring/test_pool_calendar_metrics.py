"""The exporter's view of the shared pools against a real server: what the pool calendar
reserves now, what the runs hold in the pools' global concurrency limits, and the limits'
size (the Grafana pools dashboard's reserved vs used vs capacity panels)."""

from __future__ import annotations

import asyncio
import time
import uuid

from planflow.monitoring.exporter import Exporter
from planflow.prefect.calendar_store import CalendarEntry, delete_saved_entries, save_entry
from planflow.prefect.limits import sync_limits
from planflow.runtime.admission import SharedSlots
from planflow.runtime.dispatch import Assignment

POOL = "exported-pool"


def _value(exporter: Exporter, name: str, **labels: str) -> float | None:
    return exporter.registry.get_sample_value(name, labels)


def test_the_exporter_shows_reserved_held_and_capacity_per_pool(prefect_server):
    sync_limits({POOL: {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}})
    now, run = time.time(), str(uuid.uuid4())
    entry = CalendarEntry(
        flow_run_id=run,
        pipeline="exported",
        planned_at=now,
        eta=now + 60,
        reservations=[
            {
                "component": "a",
                "pool": POOL,
                "start": now - 5,
                "finish": now + 5,
                "demand": {"cpu": 1.5},
                "state": "running",
            },
            {"component": "b", "pool": POOL, "start": now + 30, "finish": now + 60, "demand": {"cpu": 2.0}},
        ],
    )
    save_entry(entry)
    held = SharedSlots().take(Assignment("a", POOL, {"cpu": 1.5, "mem_gib": 1.0}, 0))
    assert held is not None
    try:
        exporter = Exporter(lookback_seconds=60)
        assert asyncio.run(exporter.poll_once())
        cpu, mem = {"pool": POOL, "resource": "cpu"}, {"pool": POOL, "resource": "mem_gib"}
        assert _value(exporter, "planflow_pool_slots_capacity", **cpu) == 2.0
        assert _value(exporter, "planflow_pool_slots_capacity", **mem) == 4.0
        assert _value(exporter, "planflow_pool_slots_held", **cpu) == 1.5
        assert _value(exporter, "planflow_pool_slots_held", **mem) == 1.0
        assert _value(exporter, "planflow_pool_calendar_reserved", **cpu) == 1.5  # b is not due yet
        assert _value(exporter, "planflow_pool_calendar_waiting_runs", pool=POOL) == 0  # a runs
    finally:
        held.close()
        delete_saved_entries(run)
    assert asyncio.run(exporter.poll_once())
    assert _value(exporter, "planflow_pool_slots_held", pool=POOL, resource="cpu") == 0.0
    assert _value(exporter, "planflow_pool_calendar_reserved", pool=POOL, resource="cpu") == 0.0
