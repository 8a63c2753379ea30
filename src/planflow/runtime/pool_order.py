"""A run's place in its pools' order, from the pool calendar as the run last read it.

The calendar (calendar.py, run_calendar.py) holds every run's planned and running
components. Runs use it to take a pool in its order: a step refused its slots is marked
waiting in its run's entry (`waiting`); among the components waiting for a pool, the
one planned to start first claims the pool's slots first (`first_on`, read by
slot_claims.Claims); and, held to the calendar, a step asks for its slots only once due
(`due`, `admit`). PoolOrder is that part of RunCalendar: it reads the entries the run's
watcher looked at last (`look`) and the run's own entry.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from planflow.prefect.calendar_store import CalendarEntry
from planflow.runtime.calendar import OVERRUN_SECONDS, Reservation, ahead_of, held_intervals, reservations
from planflow.runtime.dispatch import Admit, AdmitWhen
from planflow.runtime.events import RunInfo
from planflow.runtime.replan import fits

# A run whose step yields to another run's looks again this soon when asked (`first_on`):
# what it yields to is often a step that started since the last look.
FIRST_LOOK_SECONDS = 1.0
DUE_SLACK_SECONDS = 0.5  # a step may ask for its slots this long before its planned start


def _due_place(place: tuple[float, float, str], now: float) -> tuple[float, float, str]:
    """A place in a pool's order as it stands at `now`: a planned start that has passed
    counts as `now`, so that among the components overdue the run planned first comes first."""
    return (max(place[0], now), place[1], place[2])


class PoolOrder:
    """RunCalendar's reading of the pools' order (its state is set by RunCalendar)."""

    run_id: str
    entry: CalendarEntry | None
    run: RunInfo | None
    _lock: threading.RLock
    _save_due: threading.Event
    _wake: threading.Event
    _looked: float
    _others: list[Reservation] | None
    _waiting_others: dict[str, list[tuple[float, float, str]]] | None

    def look(self, entries: list[CalendarEntry]) -> None:
        """Take in what the other runs hold, for `due`: what this run yields to (`_ahead`);
        and, for `first_on`, the other runs' components waiting for their slots, with
        their places in the pools' order."""
        self._others = [o for o in reservations(self._ahead(entries), None, self.run_id) if o.state != "done"]
        planned_at = {e.flow_run_id: e.planned_at for e in entries}
        waiting: dict[str, list[tuple[float, float, str]]] = {}
        for o in reservations(entries, None, self.run_id):
            if o.state == "planned" and o.waiting:
                waiting.setdefault(o.pool, []).append((o.start, planned_at.get(o.run, 0.0), o.run))
        self._waiting_others = waiting

    def waiting(self, step: str) -> None:
        """The step is ready and was refused its slots (RunSlots.on_refused): marked in the
        entry (saved by the saver thread), so that the other runs' components after it in
        the pool's order yield the pool's turn to it (`first_on`). Its start clears the mark
        (`_move`)."""
        with self._lock:
            mine = self._reservation(step)
            if mine is None or mine.get("waiting") or mine["state"] != "planned":
                return
            mine["waiting"] = True
        self._save_due.set()

    def _reservation(self, step: str) -> dict[str, Any] | None:
        """This run's reservation of `step` (None without an entry, or not in it); the
        caller holds the entry's lock."""
        entry = self.entry
        return next((r for r in entry.reservations if r["component"] == step), None) if entry is not None else None

    def _planned_at(self) -> float:
        """This run's place in the pools' order (after every run while it has no entry)."""
        entry = self.entry
        return entry.planned_at if entry is not None else float("inf")

    def first_on(self, pool: str, step: str, now: float | None = None) -> bool:
        """Whether `step` comes first in `pool`'s order among the components waiting for
        it: no other run's component there that is ready and was refused its slots is
        planned to start before it (ties: the run planned first), as last looked (False
        before the first look that worked). Other runs' components that run there, or wait
        for their inputs, do not count. The calendar's order: a component placed early by a
        run planned later (into a gap the earlier runs left) keeps its place; without it,
        the core the step takes next went to whichever run asked first, and runs planned
        first finished at 2x their ETA, overtaken. But only while the gap is there: among
        components whose planned start has passed (`now`), the run planned first goes
        first (else a run that slipped a little yielded to every later run's component
        placed in the gap it left, its claim given back at each look: a fleet run planned
        second waited 22 s for a one-core step). When it is not first, the watcher looks
        again soon (FIRST_LOOK_SECONDS): the component it yields to may have started since."""
        waiting = self._waiting_others
        now = time.time() if now is None else now
        mine = _due_place(self._place(step), now)
        first = waiting is not None and not any(_due_place(other, now) < mine for other in waiting.get(pool, ()))
        if not first:  # not first, or no look yet (none asked for, or it failed): look again soon
            self._ask_for_look()
        return first

    def _ask_for_look(self) -> None:
        """Wake the watcher for a look at the calendar, unless it looked less than
        FIRST_LOOK_SECONDS ago."""
        if time.monotonic() - self._looked >= FIRST_LOOK_SECONDS:
            self._wake.set()

    def _place(self, step: str) -> tuple[float, float, str]:
        """`step`'s place in its pool's order: (planned start, run's planning time, run id)."""
        with self._lock:
            mine = self._reservation(step)
            start = float(mine["start"]) if mine is not None else float("inf")
        return start, self._planned_at(), self.run_id

    def _ahead(self, entries: list[CalendarEntry]) -> list[CalendarEntry]:
        """What this run yields to (calendar.ahead_of): every running component, and the
        planned ones of the runs planned before it."""
        return ahead_of(entries, self.run_id, self._planned_at())

    def due(self, step: str, now: float | None = None) -> bool:
        """Whether the step may ask for its slots: its planned start (kept current by
        re-planning) has come, within DUE_SLACK_SECONDS, or it fits now, for its planned
        duration, beside what the other runs run or have planned ahead on its pool (as last
        read) and this run's running steps, so starting early delays no other run's planned
        start (conservative backfill). A step not in the calendar is always due."""
        now = time.time() if now is None else now
        with self._lock:
            if self.entry is None:
                return True
            r = self._reservation(step)
            if r is None or r["state"] != "planned" or float(r["start"]) <= now + DUE_SLACK_SECONDS:
                return True
            if self._others is None or self.run is None:
                # no look yet (a run planned alone looks first when asked): ask for one, or
                # a step held here would wait for the next re-plan
                self._ask_for_look()
                return False
            pool, seconds = r["pool"], float(r["finish"]) - float(r["start"])
            # Others' overdue planned components (start passed, not running: waiting for
            # their inputs or their slots) do not block: counting them left the pool idle.
            others = [o for o in self._others if o.pool == pool and (o.state == "running" or o.start > now)]
            held = held_intervals(others, now)
            held += [
                (0.0, max(float(o["finish"]) - now, OVERRUN_SECONDS), o.get("demand", {}))
                for o in self.entry.reservations
                if o["state"] == "running" and o["pool"] == pool
            ]
            return fits(held, self.run.plan.capacities.get(pool, {}), r.get("demand", {}), 0.0, seconds)

    def admit(self, take: Admit) -> Admit:
        """The dispatcher's `admit`: a step asks for its shared slots only once it is due,
        so that runs take the pool in the order the calendar planned them (a step of a
        later run no longer takes a core freed for an earlier run's two-core step)."""

        return AdmitWhen(take, lambda a: self.due(a.step))
