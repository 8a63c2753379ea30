"""How late runs on a pool finish against their plans: the ETA's learned allowance.

A plan's makespan counts the components' work (their learned durations) and the other
runs' reservations, not what the coordination of many runs costs on a busy machine:
each start waits for the server's answers, the pool's turn, a look at the calendar. In
the fleet benchmark the runs' components ran about as long as planned, yet started
2-10 s after their planned starts, and the runs finished 1.2-1.3x their plans' time
(ETA ratio p50). So each run, at its end, leaves how long it took from its plan to its
end against its planned makespan (an artifact of type `planflow-eta-history` under the
key `planflow-eta-<pool>-<alone|shared>`: its main pool, and whether other runs'
components were in that pool's calendar when it was planned), and the next run's ETA is

    planned_at + makespan x (the median ratio of the last RECENT runs of that kind)

clamped to [MIN_FACTOR, MAX_FACTOR]; with no record yet, the plan's own makespan. The
plan itself does not change: the calendar still holds the planned starts and finishes,
and other runs plan around those. The log line, the plan artifact and the ETA gauge say
which allowance was used and from how many runs.

    >>> eta_factor([1.1, 1.3, 1.2])
    1.2
    >>> eta_factor([]) is None
    True
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from prefect.client.orchestration import get_client

logger = logging.getLogger("planflow.eta")
ETA_TYPE = "planflow-eta-history"
KEY_PREFIX = "planflow-eta-"
KEY_MAX = 100  # Prefect's limit on an artifact key's length
RECENT = 8  # runs of one kind the allowance is learned from
MIN_FACTOR, MAX_FACTOR = 0.5, 3.0  # an allowance outside these is taken as these
MIN_PLANNED_SECONDS = 1.0  # a run planned shorter than this teaches nothing (its ratio is noise)


@dataclass(frozen=True)
class Allowance:
    """The factor a run's planned makespan is multiplied by for its ETA, and its source."""

    factor: float = 1.0
    runs: int = 0  # how many earlier runs it was learned from (0: none, the plan's own makespan)
    key: str = ""  # where this run's own ratio goes at its end

    def says(self) -> str:
        if not self.runs:
            return "the plan's makespan (no earlier run of this kind to learn how late runs finish)"
        return f"the plan's makespan x {self.factor:.2f}, how late the last {self.runs} such run(s) finished"


def eta_key(pool: str, shared: bool) -> str:
    return f"{KEY_PREFIX}{pool}-{'shared' if shared else 'alone'}"[:KEY_MAX]


def eta_factor(ratios: Iterable[float]) -> float | None:
    """The allowance from earlier runs' ratios (finish over plan): their median, clamped."""
    found = [r for r in ratios if r > 0]
    if not found:
        return None
    return round(min(MAX_FACTOR, max(MIN_FACTOR, statistics.median(found))), 3)


def main_pool(assignments: Mapping[str, Any]) -> str | None:
    """The pool that carries most of the run's planned time (ties: by name)."""
    load: dict[str, float] = {}
    for a in assignments.values():
        seconds = (a.planned_finish or 0.0) - (a.planned_start or 0.0)
        load[a.pool] = load.get(a.pool, 0.0) + max(seconds, 0.0)
    return min(load, key=lambda pool: (-load[pool], pool)) if load else None


def read_ratios(limit: int = 200) -> dict[str, list[float]]:
    """The last RECENT ratios under each key, newest first: one request for the newest
    `limit` records of every pool (read before the plan, when the run's main pool is not
    known yet)."""
    body = {"artifacts": {"type": {"any_": [ETA_TYPE]}}, "sort": "CREATED_DESC", "limit": limit}
    with get_client(sync_client=True) as client:
        rows = client.request("POST", "/artifacts/filter", json=body).json()
    found: dict[str, list[float]] = {}
    for row in rows:
        data, key = row.get("data"), row.get("key")
        ratio = data.get("ratio") if isinstance(data, dict) else None
        if key and isinstance(ratio, int | float) and len(found.setdefault(key, [])) < RECENT:
            found[key].append(float(ratio))
    return found


def read_ratios_or_none() -> dict[str, list[float]] | None:
    """read_ratios, or None (a warning logged) when the server could not answer: the run
    goes on with its plan's own makespan as its ETA."""
    try:
        return read_ratios()
    except (httpx.HTTPError, ValueError) as exc:
        logger.warning("how late earlier runs finished could not be read (%s): the ETA is the plan's makespan", exc)
        return None


def allowance(ratios: Mapping[str, list[float]] | None, pool: str | None, shared: bool) -> Allowance:
    """The allowance for a run on `pool` (planned among other runs' components: `shared`)."""
    if pool is None:
        return Allowance()
    key = eta_key(pool, shared)
    recent = (ratios or {}).get(key, [])
    factor = eta_factor(recent)
    return Allowance(factor, len(recent), key) if factor is not None else Allowance(key=key)


def record(key: str, planned_seconds: float, actual_seconds: float, flow_run_id: str | None) -> None:
    """Leave one run's ratio (from its plan to its end, over its planned makespan)."""
    if not key or planned_seconds < MIN_PLANNED_SECONDS or actual_seconds <= 0:
        return
    ratio = actual_seconds / planned_seconds
    body: dict[str, Any] = {
        "key": key,
        "type": ETA_TYPE,
        "data": {
            "planned_s": round(planned_seconds, 3),
            "actual_s": round(actual_seconds, 3),
            "ratio": round(ratio, 4),
        },
        "description": f"a run finished {ratio:.2f}x its planned makespan (planflow's ETA allowance)",
    }
    if flow_run_id:
        body["flow_run_id"] = flow_run_id
    with get_client(sync_client=True) as client:
        client.request("POST", "/artifacts/", json=body)
