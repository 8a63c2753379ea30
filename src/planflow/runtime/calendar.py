"""The pool calendar: every run's planned and running components, shared through Prefect.

A run, once planned, records its reservations (component, pool, planned start and
finish, resources) in a CalendarEntry of its own, a keyed artifact (see
planflow.prefect.calendar_store for why one per run, and why an artifact), keeps them current
as its components start and end (RunCalendar in run_calendar.py, a reporter of its events) and
deletes them when it ends. A run that crashed leaves its entry behind: whoever reads the
calendar next deletes the entries of runs that are over or no longer exist.

The next run is planned into what is left: `capacity_steps` turns the other runs'
reservations on a pool into the pool's capacity over time (a step function) for the
planner. Reading the calendar, planning and writing the plan happen under one global
concurrency limit (`planning_lock`), so two runs never plan into the same free time.

When another run's component ends early or late, a run's waiting components are
re-planned into what is now left (replan.py), as its watcher last looked, without the
slot (run_calendar.RunCalendar.replan says why): its entry, ETA
gauge and `<slug>-eta` artifact move, and its log says by how much. A `fifo` run has no
plan, but it writes an entry too: its components placed first come, first served into
what is left, so `planflow calendar` shows what it holds and when it should finish.

    >>> other = Reservation("r", "", "p", "a", "local", 100, 130, {"cpu": 1})
    >>> [(s.start, s.end, s.capacity["cpu"]) for s in capacity_steps({"cpu": 2}, [other], now=100)]
    [(0.0, 30.0, 1.0)]
"""

from __future__ import annotations

import contextvars
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.exceptions import ObjectNotFound

from planflow.planner import Step
from planflow.prefect.calendar_store import CalendarEntry, delete_entry, read_entries
from planflow.prefect.limits import PLANNING_LIMIT
from planflow.runtime import planning_turn, shared_reads
from planflow.runtime.admission import LOCKED, _release
from planflow.runtime.dispatch import RESOURCES
from planflow.runtime.silent_runs import silent_runs
from planflow.settings import settings

logger = logging.getLogger("planflow.calendar")
OVERRUN_SECONDS = 1.0  # a running component past its planned finish: assumed to end this soon
PLANNING_WAIT_SECONDS = 120.0  # the longest a run waits for another run's planning
LOOK_SHARED_SECONDS = 0.5  # a look at the calendar another run on this machine began this recently stands
CALENDAR_KEY = "calendar"  # its key among the shared reads
CALENDAR_MAX_BYTES = 16 << 20  # a shared calendar longer than this is read from the server
PLANNING_POLL_SECONDS = 0.3  # how often a run waiting for the planning slot asks again (with jitter)


class CalendarError(RuntimeError):
    """The calendar could not be read or written within its bound."""


class PlanningLimitMissing(CalendarError):
    """The server has no planning limit yet (a new server: a run's require_limits creates it)."""


@dataclass(frozen=True)
class Reservation:
    """One component of one run on one pool; `start` and `finish` are Unix times (s)."""

    run: str
    run_name: str
    pipeline: str
    component: str
    pool: str
    start: float
    finish: float
    demand: Mapping[str, float] = field(default_factory=dict)
    state: str = "planned"  # planned | running | done
    waiting: bool = False  # planned, and its inputs are ready: refused its slots (or yielding a claim)


def reservation_data(
    component: str, pool: str, start: float, finish: float, demand: Mapping[str, float]
) -> dict[str, Any]:
    """A planned reservation as its run's entry stores it. The run's id, name and pipeline
    are the entry's (`reservations` reads them there): each reservation carried them too,
    40 % of the entry of a run of 400 (115 KB) that the server parsed and stored at each save."""
    return {
        "component": component,
        "pool": pool,
        "start": start,
        "finish": finish,
        "demand": dict(demand),
        "state": "planned",
        "waiting": False,
    }


def read_calendar(clean: bool = True) -> list[CalendarEntry]:
    """Every run's entry; with `clean`, entries of runs that are over (completed, failed,
    crashed, cancelled), no longer exist or died silently (silent_runs.py) are deleted first."""
    with get_client(sync_client=True) as client:
        found = read_entries(client)
        if not clean or not found:
            return [entry for _, entry in found]
        ids = []
        for _, entry in found:
            try:
                ids.append(UUID(entry.flow_run_id))
            except ValueError:
                pass
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))) if ids else []
        live = {str(r.id) for r in runs if r.state is None or not r.state.is_final()}
        silent = silent_runs(client, [entry for _, entry in found if entry.flow_run_id in live], time.time())
        kept = []
        for saved, entry in found:
            if entry.flow_run_id in live and entry.flow_run_id not in silent:
                kept.append(entry)
                continue
            if entry.flow_run_id in silent:
                logger.warning(
                    "dropped the calendar entry of run %s (%s): its components run past their planned finish and "
                    "it sent no heartbeat for %.0f s, so its process died without a final state. Prefect still "
                    "shows it Running: planflow's crash automation sets such runs Crashed (planflow stack up)",
                    entry.flow_run_name or entry.flow_run_id,
                    entry.pipeline,
                    silent[entry.flow_run_id],
                )
            delete_entry(client, saved)  # gone already: another reader cleared it first
        return kept


def entry_data(entry: CalendarEntry) -> dict[str, Any]:
    """The entry's data as it is now (built directly, not by pydantic's dump: that took
    10-20 ms for 400 reservations, at every save). Each reservation is copied (`_move`
    changes their times and states while the request goes; their demands never change)."""
    data = {name: getattr(entry, name) for name in CalendarEntry.model_fields}
    data["reservations"] = [dict(r) for r in entry.reservations]
    return data


def look_at_calendar() -> list[CalendarEntry]:
    """Every run's entry for a look (the pools' order, whether to re-plan; not the re-plan
    itself): a read another run on this machine began at most LOOK_SHARED_SECONDS ago
    (shared_reads.py), else a read of the server's, left for the others. Eight runs
    waiting on one machine each read the calendar every 1-5 s: 272 reads of every entry
    in a fleet burst."""
    found = shared_reads.load_read(CALENDAR_KEY, time.time() - LOOK_SHARED_SECONDS, CALENDAR_MAX_BYTES)
    if found is not None:
        try:
            return [CalendarEntry(**data) for data in found[1]]
        except (TypeError, ValueError):  # not an entry's data (pydantic's errors are ValueErrors): read it
            pass
    began = time.time()
    entries = read_calendar(clean=False)
    shared_reads.store_read(CALENDAR_KEY, began, [entry_data(entry) for entry in entries])
    return entries


def reservations(
    entries: list[CalendarEntry], pool: str | None = None, exclude: str | None = None
) -> list[Reservation]:
    out = []
    for entry in entries:
        if entry.flow_run_id == exclude:
            continue
        for r in entry.reservations:
            if pool is None or r["pool"] == pool:
                out.append(
                    Reservation(
                        entry.flow_run_id,
                        entry.flow_run_name,
                        entry.pipeline,
                        r["component"],
                        r["pool"],
                        float(r["start"]),
                        float(r["finish"]),
                        dict(r.get("demand", {})),
                        r.get("state", "planned"),
                        bool(r.get("waiting", False)),
                    )
                )
    return out


def held_intervals(items: list[Reservation], now: float) -> list[tuple[float, float, Mapping[str, float]]]:
    """(start, end, demand) relative to `now` of what is still to come: a planned
    component whose start has passed is moved to now; a running one past its planned
    finish is assumed to end within OVERRUN_SECONDS."""
    out = []
    for r in items:
        if r.state == "done":
            continue
        if r.state == "running":
            start, end = now, max(r.finish, now + OVERRUN_SECONDS)
        else:
            start = max(r.start, now)
            end = start + max(r.finish - r.start, 0.0)
        if end > now:
            out.append((start - now, end - now, r.demand))
    return out


def capacity_steps(capacity: Mapping[str, float], items: list[Reservation], now: float) -> tuple[Step, ...]:
    """A pool's capacity over time (from `now` = the plan's time 0) once the other runs'
    reservations are taken out; never below 0."""
    intervals = held_intervals(items, now)
    marks = sorted({t for s, e, _ in intervals for t in (s, e)})
    steps: list[Step] = []
    for a, b in zip(marks, marks[1:], strict=False):
        held = dict.fromkeys(RESOURCES, 0.0)
        for s, e, demand in intervals:
            if s <= a < e:
                for r in RESOURCES:
                    held[r] += float(demand.get(r, 0.0))
        if not any(v > 1e-9 for v in held.values()):
            continue
        left = {r: max(0.0, float(capacity.get(r, 0.0)) - held[r]) for r in RESOURCES}
        if steps and steps[-1].end == a and dict(steps[-1].capacity) == left:
            steps[-1] = Step(steps[-1].start, b, left)
        else:
            steps.append(Step(float(a), float(b), left))
    return tuple(steps)


def others_held(
    entries: list[CalendarEntry], capacities: Mapping[str, object], exclude: str | None, now: float
) -> dict[str, list[tuple[float, float, Mapping[str, float]]]]:
    """Per pool, what the other runs hold or have planned, relative to `now`."""
    return {
        pool: held_intervals([r for r in reservations(entries, pool, exclude) if r.state != "done"], now)
        for pool in capacities
    }


def ahead_of(entries: list[CalendarEntry], run_id: str, planned_at: float) -> list[CalendarEntry]:
    """The calendar as the run `run_id`, planned at `planned_at`, must respect when it
    re-plans or starts a component early: the running components of every run, and the
    planned ones of the runs planned before it. Planning order is priority: a run planned
    later re-plans around this one, not this one around it (else a run planned first that
    slipped a little was re-planned behind every run planned after it)."""
    return [
        e
        if planned_before(e, run_id, planned_at)
        else e.model_copy(update={"reservations": [r for r in e.reservations if r.get("state") == "running"]})
        for e in entries
        if e.flow_run_id != run_id
    ]


def planned_before(other: CalendarEntry, run_id: str, planned_at: float) -> bool:
    """Whether `other` comes before the run `run_id`, planned at `planned_at`, in the pools'
    order (planning time, then flow run id)."""
    return (other.planned_at, other.flow_run_id) < (planned_at, run_id)


BusySteps = Callable[[Mapping[str, Mapping[str, float]], float], tuple[dict[str, tuple[Step, ...]], int]]


def busy_steps(exclude: str | None, entries: list[CalendarEntry] | None = None) -> BusySteps:
    """For plan_run: each pool's capacity over time from `now` once the other runs'
    reservations are taken out, and how many reservations that is. `entries`: the
    calendar as read under the planning slot still held (run_reads.py); else it is read
    when the plan asks (stale entries cleared)."""

    def steps(capacities: Mapping[str, Mapping[str, float]], now: float) -> tuple[dict[str, tuple[Step, ...]], int]:
        found = read_calendar(clean=True) if entries is None else entries
        out, count = {}, 0
        for pool, capacity in capacities.items():
            items = [r for r in reservations(found, pool, exclude) if r.state != "done"]
            count += len(items)
            out[pool] = capacity_steps(capacity, items, now)
        return out, count

    return steps


@contextmanager
def planning_lock(wait_seconds: float = PLANNING_WAIT_SECONDS, release_later: bool = False) -> Iterator[None]:
    """Hold the global planning slot: one run at a time reads the calendar, plans and writes.
    `release_later`: the slot is given back by a thread of its own (a run goes on to its
    first component meanwhile; the thread is not a daemon, so the process waits for it).

    This machine's runs first wait for their turn here (planning_turn.py: handed over the
    moment the last run gives the slot back, without a request); the run whose turn it is
    asks the server, again every PLANNING_POLL_SECONDS while a run elsewhere (or one whose
    turn ran out) holds it. (Prefect's own
    `concurrency()` sleeps what the server's Retry-After says: with a burst of runs
    waiting that grew to tens of seconds each, and the slot stood free while every run
    that wanted it slept: the fleet benchmark's last runs planned two minutes late.)"""
    deadline = time.monotonic() + wait_seconds
    turn = planning_turn.take_turn(deadline)  # this machine's runs queue here first (planning_turn.py)
    try:
        granted = _take_planning_slot(deadline, wait_seconds)
    except BaseException:
        planning_turn.leave(turn)
        raise
    try:
        yield
    finally:
        lease = UUID(granted["lease_id"])
        if release_later:
            target = contextvars.copy_context().run
            threading.Thread(
                target=target, args=(_release_quietly, lease, turn), name="planflow-planning-release"
            ).start()
        else:
            try:
                _release(lease)
            finally:  # the next run of this machine asks once the server has the slot back
                planning_turn.leave(turn)


def _take_planning_slot(deadline: float, wait_seconds: float) -> dict[str, Any]:
    """The server's answer granting the planning slot, asked again until `deadline`."""
    refused = False  # once refused, the slot is read (no lock) before it is asked again (a write, refused or not)
    with get_client(sync_client=True) as client:
        while True:
            if refused and _planning_held(client):
                _wait_for_planning(deadline, wait_seconds)
                continue
            try:
                granted = client.increment_concurrency_slots_with_lease(
                    names=[PLANNING_LIMIT], slots=1, mode="concurrency", lease_duration=settings().slot_lease_seconds
                ).json()
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != LOCKED:
                    raise CalendarError(
                        f"cannot take the planning slot '{PLANNING_LIMIT}': {exc}. Fix: planflow pools sync"
                    ) from None
                refused = True
                _wait_for_planning(deadline, wait_seconds)
                continue
            if not granted.get("limits"):
                raise PlanningLimitMissing(
                    f"concurrency limit '{PLANNING_LIMIT}' does not exist. Fix: planflow pools sync"
                )
            return granted


def locked_calendar(read: bool) -> tuple[ExitStack | None, list[CalendarEntry] | None]:
    """The planning slot, taken (waited for: planning_lock), and the calendar read under it
    when `read`; the slot is given back when the stack is closed. (None, None) on a new
    server that has no planning limit yet: the run creates the limits, then takes it."""
    held = ExitStack()
    try:
        held.enter_context(planning_lock())
    except PlanningLimitMissing:
        return None, None
    try:
        return held, read_calendar(clean=True) if read else None
    except BaseException:
        held.close()
        raise


def _planning_held(client: Any) -> bool:
    """Another run holds the planning slot, as read now (a read that fails says no: the
    increment that follows meets the fault and reports it). A fleet burst's re-plans sent
    90 refused increments, each queued for SQLite's one write lock."""
    try:
        limit = client.read_global_concurrency_limit_by_name(PLANNING_LIMIT)
    except (ObjectNotFound, httpx.HTTPError):
        return False
    return limit.active_slots >= limit.limit


def _wait_for_planning(deadline: float, wait_seconds: float) -> None:
    """Sleep until the next look at the planning slot, or fail when that passes the deadline."""
    if time.monotonic() + PLANNING_POLL_SECONDS > deadline:
        raise CalendarError(
            f"waited {wait_seconds:.0f} s for concurrency limit '{PLANNING_LIMIT}' (another run is "
            "planning). Fix: look at its holders in the Prefect UI (Concurrency), or reset it there "
            "if a run died holding it"
        )
    time.sleep(PLANNING_POLL_SECONDS * random.uniform(0.5, 1.5))  # noqa: S311 (jitter, not secrets)


def _release_quietly(lease: UUID, turn: int | None = None) -> None:
    try:
        _release(lease)
    except Exception as exc:  # nobody waits for it: the lease runs out by itself
        logger.warning("planning slot lease %s not given back (%s); it returns when its lease runs out", lease, exc)
    finally:
        planning_turn.leave(turn)


def utc(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, tz=UTC).strftime("%H:%M:%S UTC")
