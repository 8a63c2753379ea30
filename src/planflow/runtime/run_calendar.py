"""One run's entry in the pool calendar, kept current while the run goes on.

RunCalendar writes the run's reservations when it is planned (or, under policy fifo,
placed: fifo_eta.py), moves them as its own components start and end, early or late, and
deletes them at the end. While it has components waiting, it watches the other runs'
entries (every REPLAN_SECONDS): when one of their components started or ended, or a
run came or went, it re-plans its waiting components into what is now left
(replan.list_schedule); its ETA gauge, log and `<slug>-eta`
artifact follow. Its steps ask for their shared slots only once due (`admit`), so runs
take a pool in the order the calendar says.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from dataclasses import replace
from operator import itemgetter
from typing import Any

import httpx
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from planflow.monitoring.metrics import RunRecorder
from planflow.prefect.calendar_store import CalendarEntry, create_entry, delete_entry, delete_run_entries, update_entry
from planflow.runtime import eta_history
from planflow.runtime.calendar import (
    OVERRUN_SECONDS,
    CalendarError,
    Reservation,
    entry_data,
    look_at_calendar,
    others_held,
    reservation_data,
    utc,
)
from planflow.runtime.dispatch import Assignment, StepRecord
from planflow.runtime.eta_history import Allowance
from planflow.runtime.events import Reporter, RunInfo, StepEvent
from planflow.runtime.pool_order import PoolOrder
from planflow.runtime.replan import Item, list_schedule
from planflow.runtime.reporting import artifact_key

REPLAN_SECONDS = 5.0  # how often a run with waiting components looks for changes in the calendar
FIRST_LOOK_AMONG_SECONDS = 0.2  # its first look, when it was planned around other runs' components
FIRST_LOOK_ALONE_SECONDS = REPLAN_SECONDS  # ... when it was planned alone on its pools (_watch)
ETA_CHANGE_SECONDS = 1.0  # a corrected ETA that moves less than this is not logged nor published
# Hysteresis: a re-plan's ETA is shown (log, gauge, artifact) only when it moved from the ETA
# last shown by at least this share of the time left to it (re-plans swung +51 s, -56 s, +5 s).
ETA_BAND_SHARE = 0.1
WRITE_WAIT_SECONDS = 60.0  # the most a run waits for its entry's first save (a busy server retries for seconds)
# The entry's first save waits until the run's first slots were asked for (`slots_asked`),
# at most this long: the server answers those increments, which the first components wait
# for, before the artifact write, which nothing waits for. The planning slot is held until
# the save lands, so other runs wait to plan that much longer: kept short
SAVE_AFTER_SLOTS_SECONDS = 0.25


class RunCalendar(PoolOrder, Reporter):
    """One run's entry in the calendar: written when it is planned, moved as its
    components start and end (early or late) and re-planned when other runs' do,
    deleted when it ends. Also keeps the run's ETA current in its log and its
    `planflow_pipeline_eta_timestamp_seconds`."""

    def __init__(
        self,
        run_id: str,
        run_name: str,
        logger: logging.Logger | logging.LoggerAdapter,
        recorder: RunRecorder | None = None,
    ) -> None:
        self.run_id, self.run_name, self.logger, self.recorder = run_id, run_name, logger, recorder
        self.entry: CalendarEntry | None = None
        self.run: RunInfo | None = None
        self.lateness = 0.0
        self.makespan = 0.0
        self.began: dict[str, float] = {}  # step -> when it started, s from the plan (its "started" event)
        self._lock = threading.RLock()  # the event thread and the re-planning thread both write the entry
        self._save_lock = threading.Lock()  # one write of the entry at a time, in order
        self._save_due = threading.Event()  # the saver thread's cue (flush)
        self._stop = threading.Event()
        self._wake = threading.Event()  # the watcher looks now (first_on asks; stop)
        self._looked = -1e9  # when the watcher last looked (monotonic)
        self._watcher: threading.Thread | None = None
        self._others: list[Reservation] | None = None  # the other runs' reservations, as last read
        # per pool, the other runs' components ready and refused their slots, as last read
        # (None before the first look): their places in the pool's order, for `first_on`
        self._waiting_others: dict[str, list[tuple[float, float, str]]] | None = None
        self.moves_at_once = False  # set by `listen`: the dispatcher's thread moves the entry
        self.dirty = False  # moved since the last save (on_step); the bus flush saves it
        self.shown: float | None = None  # the ETA last shown in the log, gauge and artifact
        # _move's indexes of the entry's reservations: by component, and those still planned
        self._indexed: list[dict[str, Any]] | None = None
        self._by_step: dict[str, dict[str, Any]] = {}
        self._planned: dict[str, dict[str, Any]] = {}
        self._written: Future[None] | None = None  # the entry's first save, on its thread (`write`)
        self._slots_asked = threading.Event()  # the first save's cue (slots_asked), or the run's end (delete)
        self._saved: Any = None  # the saved entry's id (calendar_store), once its first save landed
        self.allowed = Allowance()  # the ETA's allowance (write)

    def write(
        self,
        pipeline: str,
        assignments: Mapping[str, Assignment],
        planned_at: float,
        then: Callable[[], None] | None = None,
        allowed: Allowance | None = None,
    ) -> float:
        """Record the plan's reservations; returns the ETA (Unix time). The entry is saved
        on a thread of its own, once the run's first slots were asked for (`slots_asked`,
        at most SAVE_AFTER_SLOTS_SECONDS later), and `then` called after the save, saved or
        not (the runner gives the planning slot back there): the run takes its first slots
        and starts its first components meanwhile (a first save that failed fails those
        that start after it: `first_save_error`).
        `allowed`: how much longer than planned runs of this kind took (eta_history.py):
        the ETA is the plan's makespan times its factor, kept so as the run goes on."""
        self.makespan = max((a.planned_finish or 0.0 for a in assignments.values()), default=0.0)
        self.allowed = allowed or Allowance()
        self.entry = CalendarEntry(
            flow_run_id=self.run_id,
            flow_run_name=self.run_name,
            pipeline=pipeline,
            planned_at=planned_at,
            eta=planned_at + self.makespan * self.allowed.factor,
            reservations=[
                reservation_data(
                    a.step,
                    a.pool,
                    planned_at + (a.planned_start or 0.0),
                    planned_at + (a.planned_finish or 0.0),
                    a.demand,
                )
                for a in assignments.values()
            ],
        )
        written: Future[None] = Future()

        def save() -> None:
            try:
                self._slots_asked.wait(SAVE_AFTER_SLOTS_SECONDS)
                if not self._stop.is_set():  # the run ended meanwhile: nothing to save (delete waits for this)
                    self._save()
            except BaseException as exc:
                written.set_exception(exc)
                # a component that started meanwhile runs on: said, and saved at the next change
                self.logger.warning(
                    "the run's pool calendar entry was not saved (%s): other runs plan without it until a later "
                    "save lands (its slots still hold its share of the pools)",
                    exc,
                )
            else:
                written.set_result(None)
            finally:
                if then is not None:
                    then()

        self._written = written
        threading.Thread(target=contextvars.copy_context().run, args=(save,), name="planflow-entry-save").start()
        return self.entry.eta

    def slots_asked(self) -> None:
        """The run's dispatcher prepared its first round (RunSlots.prepare: the slots of its
        short steps asked for as one batch; a long step asks in its own take, after this):
        the entry's first save goes now. Before, the save's artifact write came beside
        those increments on the server, and the first components waited for both (about
        30 ms of a 40-component run's 0.1 s from its body to its first release). The
        price: a first save that fails fails the steps that start after it, no longer
        the first round's, which start beside it."""
        self._slots_asked.set()

    def written(self, timeout: float = WRITE_WAIT_SECONDS) -> None:
        """Wait for the entry's first save (`write`); its error, if it failed
        (CalendarError when it did not end within `timeout` seconds)."""
        written = self._written
        if written is None:
            return
        try:
            written.result(timeout)
        except TimeoutError:
            raise CalendarError(
                f"the pool calendar entry of run {self.run_id} was not saved within {timeout:g} s "
                "(the Prefect server does not answer in time). Fix: check the server (planflow server status)"
            ) from None

    def first_save_error(self) -> BaseException | None:
        """The error of the entry's first save (`write`) if it ended so; None while it is
        under way, or once it landed."""
        written = self._written
        if written is None or not written.done():
            return None
        return written.exception()

    def on_planned(self, run: RunInfo) -> None:
        if self.entry is None:
            return
        self.run = run
        eta = self.shown = self.entry.eta
        self.logger.info(
            "ETA of this run: %s (in %.0f s; %s into the pools' calendar%s; %s)",
            utc(eta),
            max(0.0, eta - time.time()),
            "planned" if run.policy == "plan" else "first come, first served",
            f", around {run.plan.busy} component(s) of other runs" if run.plan.busy else "",
            self.allowed.says(),
        )
        if self.recorder is not None:
            self.recorder.eta(eta)
        context = contextvars.copy_context()  # the run's context: its logger and artifacts
        self._watcher = threading.Thread(target=context.run, args=(self._watch,), name="planflow-replan", daemon=True)
        self._watcher.start()
        saver = threading.Thread(target=contextvars.copy_context().run, args=(self._saver,), name="planflow-calendar")
        saver.daemon = True
        saver.start()

    def _saver(self) -> None:
        """Writes the entry when the bus's flush asks (the latest state; asks that come
        while a write is out make one more), so that a slow write (the server retries for
        seconds when its database is busy) holds up neither the reporters nor the run's end."""
        while not self._stop.is_set():
            self._save_due.wait()
            self._save_due.clear()
            if self._stop.is_set():
                return
            try:
                self._save_after_first()
            except Exception as exc:  # the next change tries again; others read the last saved
                self.logger.debug("calendar entry not saved this time: %s", exc)

    def listen(self, run: RunInfo, notify: Callable[[str, StepRecord], None]) -> Callable[[str, StepRecord], None]:
        """The dispatcher's listener: moves the entry at once, on the dispatcher's thread (so
        that `due` sees a step that ended early before the next one asks), then `notify`."""
        self.moves_at_once = True

        def listener(kind: str, record: StepRecord) -> None:
            if kind != "skipped":
                with self._lock:
                    if self.entry is not None:
                        self._move(StepEvent(kind, replace(record), run))
            notify(kind, record)

        return listener

    def on_step(self, event: StepEvent) -> None:
        if self.entry is None or event.kind == "skipped":
            return
        with self._lock:
            if not self.moves_at_once:
                self._move(event)
            self.dirty = True  # saved at the bus's next flush: one write per batch of events
        if self.recorder is not None and self.entry is not None:
            self.recorder.eta(self.entry.eta)

    def flush(self) -> None:
        with self._lock:
            dirty, self.dirty = self.dirty, False
        if dirty and self._watcher is not None:  # the saver runs beside the watcher (on_planned)
            self._save_due.set()
        elif dirty:
            self._save_after_first()

    def _move(self, event: StepEvent) -> None:
        """The step's own reservation takes the event's time; the waiting ones move by as
        much as the step is early or late against the entry (never before now)."""
        entry, record = self.entry, event.record
        assert entry is not None
        a = event.run.plan.assignments[record.step]
        planned = a.planned_start if event.kind == "started" else a.planned_finish
        self.lateness = (event.at - entry.planned_at) - (planned or 0.0)
        if self._indexed is not entry.reservations:  # a lookup per event, not a scan of them all (N events)
            self._indexed = entry.reservations
            self._by_step = {r["component"]: r for r in entry.reservations}
            self._planned = {r["component"]: r for r in entry.reservations if r["state"] == "planned"}
        mine = self._by_step.get(record.step)
        if mine is None:
            return
        delta = event.at - float(mine["start"] if event.kind == "started" else mine["finish"])
        mine["state"] = "running" if event.kind == "started" else "done"
        mine.pop("waiting", None)
        self._planned.pop(record.step, None)
        if event.kind == "started":
            self.began[record.step] = event.at - entry.planned_at  # for what the ETAs learn (_learn)
            mine["finish"] = event.at + (float(mine["finish"]) - float(mine["start"]))
            mine["start"] = event.at
        else:
            mine["finish"] = event.at
        for r in self._planned.values():
            length = float(r["finish"]) - float(r["start"])
            r["start"] = max(event.at, float(r["start"]) + delta)
            r["finish"] = r["start"] + length
        finish = max(map(float, map(itemgetter("finish"), entry.reservations)), default=event.at)
        entry.eta = self.expected(finish, event.at)

    # -- re-planning when other runs move ----------------------------------------------------
    def _watch(self) -> None:
        """While this run has components waiting: every REPLAN_SECONDS, when what other
        runs hold on its pools changed (a component started or ended, a run came or
        went), re-plan the waiting components into what is left. Between those, a look
        only (for `first_on`, FIRST_LOOK_SECONDS apart at most) when `first_on` asks."""
        # What the others held when this run was planned: nothing (no re-plan at the first
        # look while that holds: it took the planning slot and wrote the entry for nothing,
        # beside the run's first components), else unknown (re-planned at the first look).
        seen: object = () if self.run is not None and self.run.plan.busy == 0 else None
        # The first look soon after planning when others held components on its pools: `due`
        # needs what they hold now. Planned alone, the run looks first after
        # FIRST_LOOK_ALONE_SECONDS (or when `first_on` asks): a run that comes after it plans
        # into what it left, and a calendar read 0.2 s in was a request and a parse of
        # every entry beside a short run's steps.
        replan_at = time.monotonic() + (FIRST_LOOK_AMONG_SECONDS if seen is None else FIRST_LOOK_ALONE_SECONDS)
        while True:
            self._wake.wait(max(0.0, replan_at - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                waiting = self.entry is not None and any(r["state"] == "planned" for r in self.entry.reservations)
            due = time.monotonic() >= replan_at
            if due:
                replan_at = time.monotonic() + REPLAN_SECONDS
            if not waiting:
                continue
            self._looked = time.monotonic()  # a failed look is not asked for again at once
            try:
                entries = look_at_calendar()  # another run's look on this machine, if just now
                self.look(entries)
                mark = fingerprint(entries, self.run_id)
                if due and mark != seen:
                    self.replan(entries)
                    seen = mark
            # a server busy, unreachable, or an entry gone: the next round tries again
            except (CalendarError, ObjectNotFound, httpx.HTTPError, OSError) as exc:
                self.logger.debug("re-planning skipped this round: %s", exc)
            except Exception:  # a fault of planflow's own: said, not swallowed; the run goes on
                self.logger.warning("re-planning failed this round; the ETA shown may be stale", exc_info=True)

    def replan(self, entries: list[CalendarEntry]) -> float | None:
        """Re-plan this run's waiting components into what the other runs hold now
        (`entries`: the calendar as the watcher just looked at it); returns the new ETA
        (None when there is nothing to move).

        Not under the planning slot. A re-plan moves only this run's own waiting
        components, around the runs planned before it (`_ahead`), which ignore it; the
        slot (an increment, a read of the calendar under it, a decrement, often a refusal
        and a read of the slot first) made a re-plan about six requests instead of one
        save, about 60 times in a fleet burst of 8 runs. What it guarded: a run planning
        at that moment may read this entry just before it moves, and plans beside where
        it was; its own watcher's first look, 0.2 s after its plan, sees the move and
        re-plans it."""
        with self._lock:
            if self.entry is None or self.run is None:
                return None
            old, new = self.entry.eta, self._replace(entries, time.time())
        self._save_after_first()
        old = self.shown if self.shown is not None else old
        if abs(new - old) < eta_band(old, time.time()):
            return new  # the calendar holds the new placement; what is shown stays put
        self.shown = new
        if self.recorder is not None:
            self.recorder.eta(new)
        if abs(new - old) >= ETA_CHANGE_SECONDS:
            self.logger.info(
                "ETA corrected: %s -> %s (%+.0f s): other runs on the pools moved, the waiting components "
                "were re-planned into what they leave",
                utc(old),
                utc(new),
                new - old,
            )
            self._publish(old, new)
        return new

    def _replace(self, entries: list[CalendarEntry], now: float) -> float:
        entry, run = self.entry, self.run
        assert entry is not None and run is not None
        held = others_held(self._ahead(entries), run.plan.capacities, self.run_id, now)
        done_at: dict[str, float] = {}
        for r in entry.reservations:
            if r["state"] == "running":
                end = max(float(r["finish"]), now + OVERRUN_SECONDS) - now
                held.setdefault(r["pool"], []).append((0.0, end, r.get("demand", {})))
                done_at[r["component"]] = end
            elif r["state"] == "done":
                done_at[r["component"]] = 0.0
        order = {name: i for i, name in enumerate(run.pipeline.topological_order())}
        waiting = sorted(
            (r for r in entry.reservations if r["state"] == "planned"),
            key=lambda r: (float(r["start"]), order.get(r["component"], 0)),
        )
        items = [
            Item(
                r["component"],
                r["pool"],
                max(0.0, float(r["finish"]) - float(r["start"])),
                r.get("demand", {}),
                run.pipeline.upstream(r["component"]),
            )
            for r in waiting
        ]
        times = list_schedule(items, run.plan.capacities, held, done_at)
        for r in waiting:
            start, finish = times[r["component"]]
            r["start"], r["finish"] = now + start, now + finish
        entry.eta = self.expected(max([now] + [float(r["finish"]) for r in entry.reservations]), now)
        return entry.eta

    def expected(self, finish: float, now: float) -> float:
        """When the run is expected to end, its calendar saying `finish`: the time left to
        that, times the allowance learned from earlier runs (eta_history.py)."""
        return now + max(0.0, finish - now) * self.allowed.factor

    def _publish(self, old: float, new: float) -> None:
        if self.run is None or self.run.plan.plan is None:
            return  # a fifo run has no plan artifacts: its log and gauge say it
        try:
            create_markdown_artifact(
                key=artifact_key(self.run.pipeline, "eta"),
                markdown=f"| ETA | {utc(new)} |\n|---|---|\n| was | {utc(old)} |\n| moved | {new - old:+.0f} s |",
                description="The run's ETA, corrected when other runs on its pools ended early or late",
            )
        except Exception as exc:  # no flow run context (a run outside Prefect): the log said it
            self.logger.debug("ETA artifact not written: %s", exc)

    def on_finished(self, run: RunInfo, records: Mapping[str, StepRecord]) -> None:
        # Awaited: other runs re-plan when this entry goes. Not awaited (a thread of its
        # own, to spare the run's end the busy server's retries, 2-6 s), a run in a process
        # of its own often ended before the delete reached the server, and the runs planned
        # behind it never moved up (tests/flows/test_shared_pools.py, the re-plan test).
        planned_at = self.entry.planned_at if self.entry is not None else None
        self.delete()
        if planned_at is not None and records and all(r.state == "Completed" for r in records.values()):
            if learned_plan(run):
                self._learn(time.time() - planned_at, run, records)

    def _learn(self, took: float, run: RunInfo, records: Mapping[str, StepRecord]) -> None:
        """Leave how late this run finished against its plan replayed with the durations its
        components took, for the next runs' ETAs."""
        planned = {
            step: (a.planned_start, a.planned_finish)
            for step, a in run.plan.assignments.items()
            if a.planned_start is not None and a.planned_finish is not None
        }
        took_each = {step: s for step, r in records.items() if (s := r.learned_seconds) is not None}
        replayed = eta_history.replayed_makespan(run.pipeline.upstream, planned, took_each, self.began)
        try:
            eta_history.record(self.allowed.keys, self.makespan, took, self.run_id, replayed)
        except Exception as exc:  # the run is over: the next runs' ETAs learn from the others
            self.logger.warning("how late this run finished was not recorded for the next ETAs: %s", exc)

    def _save_after_first(self) -> None:
        """`_save`, once the entry's first save (write's thread) ended: only that one creates
        the entry (the saver at the first step event and a re-plan come here), so that it
        is created once and `first_save_error` tells that save's fate."""
        written = self._written
        if written is not None and not written.done():
            wait_for([written], WRITE_WAIT_SECONDS)
        self._save()

    def _save(self) -> None:
        """Write the entry: created once (one request), then one PATCH of its data per change."""
        # The request goes out without the entry's lock: the dispatcher's listener takes
        # that lock at every step event, and a write can wait seconds (the server retries
        # when its database is busy). Saves are serialised, each sending the entry as it is.
        with self._save_lock:
            with self._lock:
                entry = self.entry
                if entry is None:
                    return
                saved, data = self._saved, entry_data(entry)
            with get_client(sync_client=True) as client:
                if saved is None:
                    self._saved = create_entry(client, data)
                else:
                    update_entry(client, saved, data)  # False: deleted meanwhile (the run ended)

    def delete(self, wait: bool = True) -> None:
        """Stop re-planning and remove this run's entry (idempotent); `wait=False`: on a
        thread of its own."""
        self._stop.set()
        self._wake.set()  # the watcher ends
        self._save_due.set()  # the saver ends
        self._slots_asked.set()  # a first save still waiting wakes, sees the run ended and saves nothing
        if self._written is not None:  # a delete before the entry's first save lands would miss it
            wait_for([self._written], WRITE_WAIT_SECONDS)
        with self._lock:
            if self.entry is None:
                return
            saved, self.entry, self._saved = self._saved, None, None
        if not wait:
            target = contextvars.copy_context().run
            threading.Thread(target=target, args=(self._remove_quietly, saved), name="planflow-calendar-delete").start()
            return
        self._remove(saved)

    def _remove_quietly(self, saved: Any) -> None:
        try:
            self._remove(saved)
        except Exception as exc:  # left for the next reader of the calendar to clear (the run is over)
            self.logger.debug("calendar entry of run %s not deleted: %s", self.run_id, exc)

    def _remove(self, saved: Any) -> None:
        with get_client(sync_client=True) as client:
            if saved is None:  # saved by another object (or never): found by its key
                delete_run_entries(client, self.run_id)
            else:
                delete_entry(client, saved)


def learned_plan(run: RunInfo) -> bool:
    """The run was planned with durations learned from earlier runs, every one: only then
    does how late it finished say what coordination costs (a plan from declarations is
    off by how wrong they are: a 2 s declaration of a 0.3 s step made a 0.45 ratio)."""
    pp = run.plan.plan
    return pp is not None and all(pp.source_of(step).startswith("history") for step in pp.assignments)


def eta_band(shown: float, now: float) -> float:
    """How far a re-planned ETA must move from the one shown to be shown instead.

    >>> eta_band(shown=160.0, now=100.0)   # 60 s left: 6 s
    6.0
    >>> eta_band(shown=100.5, now=100.0)   # at the end: at least ETA_CHANGE_SECONDS
    1.0
    """
    return max(ETA_CHANGE_SECONDS, ETA_BAND_SHARE * max(0.0, shown - now))


def fingerprint(entries: list[CalendarEntry], exclude: str) -> tuple:
    """What other runs hold, coarsely: which of their components are planned, running or done."""
    return tuple(
        sorted(
            (e.flow_run_id, r["component"], r.get("state", "planned"))
            for e in entries
            if e.flow_run_id != exclude
            for r in e.reservations
        )
    )
