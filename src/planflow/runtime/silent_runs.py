"""Calendar entries of runs whose process died without a final state.

A run killed with SIGKILL (or whose machine went away) stays Running in Prefect: nothing
sets it Crashed but planflow's crash automation (`planflow stack up`), which watches the
runs' heartbeats. Its slots come back within their lease, but its calendar entry, cleared
only for runs in a final state, stayed: other runs planned around its "running"
components for good, and `planflow calendar` showed them minutes past their finish.

So reading the calendar to clean it also drops the entry of a run that is silent: a
component of it still "running" past its planned finish by more than the crash
automation's wait (`crash_after_seconds`: three of Prefect's flow heartbeats), and no
heartbeat of the run within that wait, though it sent at least one (so a run whose
heartbeats are off is never taken for dead). The run itself is left as it is: setting
it Crashed is the crash automation's (and the retry's after it).

    silent = silent_runs(client, entries, time.time())   # flow run ids
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from planflow.prefect.calendar_store import CalendarEntry
from planflow.prefect.heartbeats import MIN_HEARTBEAT_SECONDS, flow_heartbeat_seconds

HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"


def silent_after_seconds() -> float:
    """Seconds without a heartbeat after which a run counts as dead: three of Prefect's
    flow heartbeats (180 s by default), as the crash automation waits."""
    return 3 * max(MIN_HEARTBEAT_SECONDS, flow_heartbeat_seconds())


def _overdue(entry: CalendarEntry, now: float, after: float) -> bool:
    return any(r.get("state") == "running" and float(r["finish"]) < now - after for r in entry.reservations)


def _last_heartbeat(client: Any, entry: CalendarEntry) -> dt.datetime | None:
    """When the run last sent a heartbeat since it was planned (None: never)."""
    since = dt.datetime.fromtimestamp(entry.planned_at - 60, dt.UTC)
    body = {
        "filter": {
            "occurred": {"since": since.isoformat(), "until": dt.datetime.now(dt.UTC).isoformat()},
            "event": {"name": [HEARTBEAT_EVENT]},
            "resource": {"id": [f"prefect.flow-run.{entry.flow_run_id}"]},
            "order": "DESC",
        },
        "limit": 1,
    }
    events = client.request("POST", "/events/filter", json=body).json().get("events") or []
    return dt.datetime.fromisoformat(events[0]["occurred"]) if events else None


def silent_runs(client: Any, entries: list[CalendarEntry], now: float) -> dict[str, float]:
    """Flow run id -> seconds since its last heartbeat, for each run of `entries` that is
    silent (module docstring); one events read per run with a component long overdue."""
    after = silent_after_seconds()
    silent = {}
    for entry in entries:
        if not _overdue(entry, now, after):
            continue
        last = _last_heartbeat(client, entry)
        if last is not None and now - last.timestamp() > after:
            silent[entry.flow_run_id] = now - last.timestamp()
    return silent
