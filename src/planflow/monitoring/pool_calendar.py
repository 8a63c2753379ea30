"""The shared pools as the exporter sees them: reserved (calendar) vs used (slots) vs capacity.

Each poll reads every run's CalendarEntry (one request) and every global concurrency
limit (one request) and sets, per pool and resource:

- `planflow_pool_calendar_reserved`: what the calendar reserves now: components
  running, and planned ones whose planned start has come (a run waiting for its slots
  still reserves them);
- `planflow_pool_slots_held`: what the runs hold in the pool's shared slots;
- `planflow_pool_slots_capacity`: the limit's size (the pool's capacity as admission sees it);
- `planflow_pool_calendar_waiting_runs`: runs with components planned on the pool and
  none running there yet.

Resources are in the pools' units (cores, GPUs, GiB). Entries of runs that are over are
left for the calendar's own readers to clear; the exporter only reads.

    >>> reserved_now([{"pool": "p", "state": "planned", "start": 5, "finish": 9, "demand": {"cpu": 1}}], 6)
    {'p': {'cpu': 1.0, 'gpu': 0.0, 'mem_gib': 0.0}}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from planflow.monitoring.metrics import ExporterMetrics
from planflow.prefect.calendar_store import CalendarEntry, read_entries_async
from planflow.prefect.limits import RESOURCES, SLOTS_PER_UNIT, parse_limit_name

PAGE = 200


def reserved_now(items: Iterable[Mapping[str, Any]], now: float) -> dict[str, dict[str, float]]:
    """Per pool, the demand of the reservations that hold it at `now`."""
    out: dict[str, dict[str, float]] = {}
    for r in items:
        state = r.get("state", "planned")
        due = state == "running" or (state == "planned" and float(r["start"]) <= now)
        use = out.setdefault(r["pool"], dict.fromkeys(RESOURCES, 0.0))
        if due:
            for resource in RESOURCES:
                use[resource] += float(r.get("demand", {}).get(resource, 0.0))
    return out


def waiting_runs(entries: Iterable[CalendarEntry]) -> dict[str, int]:
    """Per pool, the runs with components planned there and none running there."""
    out: dict[str, int] = {}
    for entry in entries:
        pools = {r["pool"] for r in entry.reservations}
        for pool in pools:
            states = {r.get("state", "planned") for r in entry.reservations if r["pool"] == pool}
            out[pool] = out.get(pool, 0) + int("planned" in states and "running" not in states)
    return out


async def collect(client: Any, metrics: ExporterMetrics, now: float) -> None:
    """Read the calendar and the limits once and set the pool gauges."""
    entries = await read_entries_async(client)
    limits = await client.read_global_concurrency_limits(limit=PAGE)
    held: dict[str, dict[str, float]] = {}
    capacity: dict[str, dict[str, float]] = {}
    for limit in limits:
        parsed = parse_limit_name(limit.name)
        if parsed is None:
            continue
        pool, resource = parsed
        held.setdefault(pool, dict.fromkeys(RESOURCES, 0.0))[resource] = limit.active_slots / SLOTS_PER_UNIT[resource]
        capacity.setdefault(pool, dict.fromkeys(RESOURCES, 0.0))[resource] = limit.limit / SLOTS_PER_UNIT[resource]
    reserved = reserved_now((r for e in entries for r in e.reservations), now)
    waiting = waiting_runs(entries)
    for gauge in (metrics.pool_reserved, metrics.pool_held, metrics.pool_limit, metrics.pool_waiting_runs):
        gauge.clear()
    for pool in sorted(set(capacity) | set(reserved)):
        for resource in RESOURCES:
            metrics.pool_reserved.labels(pool, resource).set(reserved.get(pool, {}).get(resource, 0.0))
            if pool in capacity:
                metrics.pool_held.labels(pool, resource).set(held[pool][resource])
                metrics.pool_limit.labels(pool, resource).set(capacity[pool][resource])
        metrics.pool_waiting_runs.labels(pool).set(waiting.get(pool, 0))
