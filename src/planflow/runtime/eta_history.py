"""How late runs on a pool finish against their plans: the ETA's learned allowance.

A plan's makespan counts the components' work (their learned durations) and the other
runs' reservations, not what the coordination of many runs costs on a busy machine:
each start waits for the server's answers, the pool's turn, a look at the calendar. In
the fleet benchmark the runs' components ran about as long as planned, yet started
2-10 s after their planned starts, and the runs finished 1.2-1.3x their plans' time
(ETA ratio p50). So each run, at its end, leaves how long it took from its plan to its
end against its plan replayed with the durations its components took (replayed_makespan:
the history puts those into the next plans; counted here too, a burst whose plans came
from runs alone taught allowances of 1.9-2.8 and the next burst's runs ended at 0.71x
their ETA), as an artifact of type `planflow-eta-history` under the
keys `planflow-eta-<pool>-<alone|shared>` and the same followed by `-<pipeline>`: its
main pool, whether other runs' components were in that pool's calendar when it was
planned, and its pipeline. The next run's ETA is

    planned_at + makespan x (the median ratio of the last RECENT runs of that kind)

(from fewer than SETTLED runs, the plan's own makespan counting as one more: eta_factor)
where that kind is the same pipeline once MIN_OWN of its runs are recorded, else any
pipeline on the pool, clamped to [MIN_FACTOR, MAX_FACTOR]; with no record yet, the
plan's own makespan. The plan itself does not change: the calendar still holds the
planned starts and finishes, and other runs plan around those. The log line, the plan artifact and the ETA gauge say
which allowance was used and from how many runs.

    >>> eta_factor([1.1, 1.3, 1.2])
    1.2
    >>> eta_factor([]) is None
    True
"""

from __future__ import annotations

import logging
import re
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from graphlib import TopologicalSorter
from typing import Any

import httpx
from prefect.client.orchestration import get_client

logger = logging.getLogger("planflow.eta")
ETA_TYPE = "planflow-eta-history"
KEY_PREFIX = "planflow-eta-"
KEY_MAX = 100  # Prefect's limit on an artifact key's length
RECENT = 8  # runs of one kind the allowance is learned from
MAX_PAGES = 8  # the most requests one read by key makes
MIN_FACTOR, MAX_FACTOR = 0.5, 3.0  # an allowance outside these is taken as these
MIN_PLANNED_SECONDS = 1.0  # a run planned shorter than this teaches nothing (its ratio is noise)
MIN_OWN = 2  # a pipeline's own runs make its allowance once this many are recorded
SETTLED = 3  # from fewer runs than this the plan's own makespan counts as one more (eta_factor)


@dataclass(frozen=True)
class Allowance:
    """The factor a run's planned makespan is multiplied by for its ETA, and its source."""

    factor: float = 1.0
    runs: int = 0  # how many earlier runs it was learned from (0: none, the plan's own makespan)
    keys: tuple[str, ...] = ()  # where this run's own ratio goes at its end (its pipeline's, its pool's)
    own: bool = False  # learned from runs of the same pipeline (else: of any pipeline on the pool)

    def says(self) -> str:
        if not self.runs:
            return "the plan's makespan (no earlier run of this kind to learn how late runs finish)"
        whose = "of this pipeline" if self.own else "on this pool"
        return f"the plan's makespan x {self.factor:.2f}, how late the last {self.runs} such run(s) {whose} finished"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def eta_key(pool: str, shared: bool, pipeline: str | None = None) -> str:
    """Where the ratios of runs on `pool` (alone or among others) go; of one pipeline's runs
    with `pipeline`."""
    key = f"{KEY_PREFIX}{_slug(pool)}-{'shared' if shared else 'alone'}"
    return (f"{key}-{_slug(pipeline)}" if pipeline else key)[:KEY_MAX]


def eta_factor(ratios: Iterable[float]) -> float | None:
    """The allowance from earlier runs' ratios (finish over plan): their median, clamped.
    From fewer than SETTLED runs the plan's own makespan counts as one more run, of ratio 1,
    and of two middle values the one nearer 1 is taken: the median of two runs was their
    mean, so one incident (a run 3x late) nearly doubled the next ETAs; now one late run
    alone moves nothing, and two that agree do.

    >>> eta_factor([1.0, 3.0]), eta_factor([1.3, 1.4]), eta_factor([2.0])
    (1.0, 1.3, 1.0)
    """
    found = [r for r in ratios if r > 0]
    if not found:
        return None
    if len(found) >= SETTLED:
        middle = statistics.median(found)
    else:  # the plan's own makespan as one more run; of two middle values, the one nearer 1
        ordered = sorted([*found, 1.0])
        low, high = ordered[(len(ordered) - 1) // 2], ordered[len(ordered) // 2]
        middle = min((low, high), key=lambda r: abs(r - 1.0))
    return round(min(MAX_FACTOR, max(MIN_FACTOR, middle)), 3)


def main_pool(assignments: Mapping[str, Any]) -> str | None:
    """The pool that carries most of the run's planned time (ties: by name)."""
    load: dict[str, float] = {}
    for a in assignments.values():
        seconds = (a.planned_finish or 0.0) - (a.planned_start or 0.0)
        load[a.pool] = load.get(a.pool, 0.0) + max(seconds, 0.0)
    return min(load, key=lambda pool: (-load[pool], pool)) if load else None


def known_main_pool(mode: str, local_pool: str) -> str | None:
    """A run's main pool when it is known before its plan: in-process, its local pool
    (its ratios are then read by key, `read_ratios(pool=...)`); else None."""
    return local_pool if mode == "inprocess" else None


def read_ratios(limit: int = 200, pool: str | None = None, pipeline: str | None = None) -> dict[str, list[float]]:
    """The last RECENT ratios under each key, newest first.

    With `pool` (a run whose main pool is known before its plan: in-process, its local
    pool): only the keys a run of `pipeline` there takes its allowance from (alone and
    shared; its pipeline's and the pool's), RECENT records per key a page; a key still
    short while others filled the page is read on from where it stopped, alone (usually
    one request of a few dozen rows). Without: the newest `limit` records of every pool in
    one request (the main pool is not known yet): 200 rows once 200 runs recorded
    theirs, 19-38 ms of the server's CPU per run against 4 ms by key, measured."""
    if pool is None:
        body = {"artifacts": {"type": {"any_": [ETA_TYPE]}}, "sort": "CREATED_DESC", "limit": limit}
        with get_client(sync_client=True) as client:
            return _ratios(client.request("POST", "/artifacts/filter", json=body).json())
    names = (pipeline, None) if pipeline else (None,)
    keys = list(dict.fromkeys(eta_key(pool, shared, name) for shared in (True, False) for name in names))
    rows: list[dict[str, Any]] = []
    read = dict.fromkeys(keys, 0)  # rows read per key: the newest of each, in order
    short = keys
    with get_client(sync_client=True) as client:
        for _ in range(MAX_PAGES):
            page = RECENT * len(short)
            # The newest `page` rows of the keys still short, after the ones already read
            # of them: rows of any set of keys come newest first, so those are a prefix.
            body = {
                "artifacts": {"type": {"any_": [ETA_TYPE]}, "key": {"any_": short}},
                "sort": "CREATED_DESC",
                "offset": sum(read[key] for key in short),
                "limit": page,
            }
            got = client.request("POST", "/artifacts/filter", json=body).json()
            rows += got
            for row in got:
                read[row.get("key")] = read.get(row.get("key"), 0) + 1
            if len(got) < page:
                break  # the keys still short have no more
            short = [key for key in keys if read[key] < RECENT and key in short]
            if not short:
                break
    return _ratios(rows)


def _ratios(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for row in rows:
        data, key = row.get("data"), row.get("key")
        ratio = data.get("ratio") if isinstance(data, dict) else None
        if key and isinstance(ratio, int | float) and len(found.setdefault(key, [])) < RECENT:
            found[key].append(float(ratio))
    return found


def read_ratios_or_none(pool: str | None = None, pipeline: str | None = None) -> dict[str, list[float]] | None:
    """read_ratios, or None (a warning logged) when the server could not answer: the run
    goes on with its plan's own makespan as its ETA."""
    try:
        return read_ratios(pool=pool, pipeline=pipeline)
    except (httpx.HTTPError, ValueError) as exc:
        logger.warning("how late earlier runs finished could not be read (%s): the ETA is the plan's makespan", exc)
        return None


def allowance(
    ratios: Mapping[str, list[float]] | None, pool: str | None, shared: bool, pipeline: str | None = None
) -> Allowance:
    """The allowance for a run of `pipeline` on `pool` (planned among other runs'
    components: `shared`): learned from that pipeline's own runs once MIN_OWN of them are
    recorded (a pipeline of 30 short components waits at more starts than one of 4), else
    from every pipeline's runs on the pool."""
    if pool is None:
        return Allowance()
    keys = (eta_key(pool, shared, pipeline), eta_key(pool, shared)) if pipeline else (eta_key(pool, shared),)
    found = ratios or {}
    own = found.get(keys[0], []) if pipeline else []
    recent, is_own = (own, True) if len(own) >= MIN_OWN else (found.get(keys[-1], []), False)
    factor = eta_factor(recent)
    if factor is None:
        return Allowance(keys=keys)
    return Allowance(factor, len(recent), keys, is_own)


def replayed_makespan(
    upstream: Callable[[str], Iterable[str]],
    planned: Mapping[str, tuple[float, float]],
    took: Mapping[str, float],
    began: Mapping[str, float] | None = None,
) -> float | None:
    """The plan's makespan had each component taken as long as it did (`took`, s): each
    starts after its `upstream` as planned, keeping the wait the plan gave it after them
    (for capacity, for other runs' reservations), and one with no upstream at its planned
    start; or when it began (`began`, s from the plan's time 0), where that was earlier.
    `planned`: step -> (start, finish), s from the plan's time 0. None when a step lacks a
    figure.

    What is left between this and the run's actual time is what coordination cost (late
    starts), not how wrong the durations were: the history corrects those in the next
    plans, so an allowance that also learned them would count them twice. Nor early
    starts: a step planned behind another run's reservation that ended early, or that
    belonged to a run which died (its entry stays until it is found silent, minutes),
    began before its plan said, and the run's ratio (0.05-0.11 seen) cut the next runs'
    ETAs to half their plans.

    >>> replayed_makespan({"b": ["a"]}.get, {"a": (0.0, 2.0), "b": (3.0, 4.0)}, {"a": 5.0, "b": 1.0})
    7.0
    >>> replayed_makespan({}.get, {"a": (5.0, 6.0)}, {"a": 0.5}, began={"a": 0.1})
    0.6
    """
    if not planned or not set(planned) <= set(took):
        return None
    before = {step: [u for u in (upstream(step) or ()) if u in planned] for step in planned}
    ends: dict[str, float] = {}
    for step in TopologicalSorter(before).static_order():
        start, _ = planned[step]
        if before[step]:  # the planned wait after its last upstream, after their replayed ends
            wait = start - max(planned[u][1] for u in before[step])
            start = max(ends[u] for u in before[step]) + max(0.0, wait)
        if began is not None and step in began:
            start = min(start, max(0.0, began[step]))
        ends[step] = start + max(0.0, took[step])
    return max(ends.values())


def record(
    keys: Iterable[str],
    planned_seconds: float,
    actual_seconds: float,
    flow_run_id: str | None,
    replayed_seconds: float | None = None,
) -> None:
    """Leave one run's ratio under each of `keys` (its pipeline's and its pool's): from its
    plan to its end, over its plan replayed with the durations it saw (replayed_makespan;
    its planned makespan when not given)."""
    against = replayed_seconds if replayed_seconds is not None else planned_seconds
    if against < MIN_PLANNED_SECONDS or actual_seconds <= 0:
        return
    ratio = actual_seconds / against
    data = {"planned_s": round(planned_seconds, 3), "actual_s": round(actual_seconds, 3), "ratio": round(ratio, 4)}
    if replayed_seconds is not None:
        data["replayed_s"] = round(replayed_seconds, 3)
    with get_client(sync_client=True) as client:
        for key in keys:
            body: dict[str, Any] = {
                "key": key,
                "type": ETA_TYPE,
                "data": data,
                "description": f"a run took {ratio:.2f}x its plan replayed with its durations (planflow ETA allowance)",
            }
            if flow_run_id:
                body["flow_run_id"] = flow_run_id
            client.request("POST", "/artifacts/", json=body)
