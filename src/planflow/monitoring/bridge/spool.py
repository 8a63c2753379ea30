"""The bridge's durable spool: alerts stored in SQLite until Prefect accepted their
events, and, for alerts about a work pool or queue, until Prefect acted on them.

Schema version 2 (`PRAGMA user_version`) adds to version 1's `alerts` table the columns
the delivery needs (see delivery.py); an existing version-1 spool file is migrated in
place when it is opened (its rows keep their state; they count as not tracked).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

SCHEMA_VERSION = 2
# Alerts about these resources are what the pool-level automations act on: the spool
# tracks them until Prefect acted, and coalesces a storm of them (delivery.py).
TRACKED_RESOURCES = ("prefect.work-pool.", "prefect.work-queue.")
_V2_COLUMNS = {
    "grp": "TEXT",  # alertname|resource id of a tracked alert, else NULL
    "status": "TEXT",  # firing | resolved
    "event_id": "TEXT",  # the id of the event last sent (a re-send gets a new one)
    "acted": "REAL",  # when Prefect's automation action on it was seen
    "coalesced_into": "INTEGER",  # the seq of the alert it was coalesced into
    "resends": "INTEGER NOT NULL DEFAULT 0",
}

CHECK_SECONDS = 5.0  # an integrity check stands this long (problem())


class Pending(NamedTuple):
    seq: int
    event: str
    grp: str | None
    status: str | None


class Leader(NamedTuple):
    """The last alert of a group that was sent on its own (not coalesced)."""

    seq: int
    status: str
    event_id: str
    forwarded: float


def tracking(event: dict) -> tuple[str | None, str | None, str]:
    """(group, status, event id) of an event: group is `alertname|resource id` when its
    resource is one the pool-level automations act on, else None."""
    resource = event.get("resource", {})
    resource_id = resource.get("prefect.resource.id", "")
    status = (event.get("payload") or {}).get("status")
    grp = None
    if resource_id.startswith(TRACKED_RESOURCES):
        grp = f"{resource.get('planflow.alert.name', '')}|{resource_id}"
    return grp, status, event.get("id", "")


class Spool:
    """Alerts stored durably until the Prefect API accepted their events."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._checked: tuple[float, str | None] | None = None  # (when, what) of the last integrity check
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS alerts (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                key TEXT NOT NULL UNIQUE,          -- fingerprint|startsAt|status
                event TEXT NOT NULL,               -- the Prefect event, JSON
                received REAL NOT NULL,
                forwarded REAL,                    -- NULL until Prefect accepted it
                attempts INTEGER NOT NULL DEFAULT 0,
                error TEXT                         -- set when Prefect refused the event
            );
            CREATE INDEX IF NOT EXISTS alerts_pending ON alerts (forwarded, seq);
            """
        )
        self._migrate()

    def _migrate(self) -> None:
        """Version 1 -> 2: add the delivery columns (idempotent, in one transaction)."""
        if self._db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                have = {row[1] for row in self._db.execute("PRAGMA table_info(alerts)")}
                for column, kind in _V2_COLUMNS.items():
                    if column not in have:
                        self._db.execute(f"ALTER TABLE alerts ADD COLUMN {column} {kind}")
                self._db.execute("CREATE INDEX IF NOT EXISTS alerts_group ON alerts (grp, forwarded)")
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def store(self, items: list[tuple[str, str, float]]) -> tuple[int, list[str]]:
        """Insert (key, event json, received); returns (new count, duplicate keys)."""
        duplicates = []
        rows = [(key, event, received, *tracking(json.loads(event))) for key, event, received in items]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO alerts (key, event, received, grp, status, event_id) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        row,
                    )
                    if cur.rowcount == 0:
                        duplicates.append(row[0])
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite already rolled back after some errors (a full disk): a second
                # ROLLBACK would raise "cannot rollback" and hide the cause
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return len(items) - len(duplicates), duplicates

    def pending(self, limit: int) -> list[Pending]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event, grp, status FROM alerts WHERE forwarded IS NULL ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [Pending(*row) for row in rows]

    def mark(self, seqs: list[int], error: str | None = None) -> None:
        now = time.time()
        with self._lock:
            self._db.executemany(
                "UPDATE alerts SET forwarded = ?, error = ?, attempts = attempts + 1 WHERE seq = ?",
                [(now, error, s) for s in seqs],
            )

    def attempted(self, seqs: list[int]) -> None:
        with self._lock:
            self._db.executemany("UPDATE alerts SET attempts = attempts + 1 WHERE seq = ?", [(s,) for s in seqs])

    # -- delivery (delivery.py) ----------------------------------------------------------
    def leader(self, grp: str, since: float) -> Leader | None:
        """The group's last alert sent on its own, forwarded since `since`."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq, status, event_id, forwarded FROM alerts WHERE grp = ? AND forwarded >= ? "
                "AND coalesced_into IS NULL AND error IS NULL ORDER BY forwarded DESC, seq DESC LIMIT 1",
                (grp, since),
            ).fetchone()
        return Leader(*row) if row else None

    def coalesce(self, pairs: list[tuple[int, int]]) -> None:
        """Record (seq, leader seq): each alert was sent as coalesced into its leader."""
        with self._lock:
            self._db.executemany("UPDATE alerts SET coalesced_into = ? WHERE seq = ?", [(lead, s) for s, lead in pairs])

    def unconfirmed(self, since: float, until: float | None = None) -> list[tuple[int, str]]:
        """(seq, event id) of tracked alerts sent on their own between `since` and
        `until` on which no action of Prefect was seen yet."""
        with self._lock:
            return self._db.execute(
                "SELECT seq, event_id FROM alerts WHERE grp IS NOT NULL AND coalesced_into IS NULL "
                "AND acted IS NULL AND error IS NULL AND forwarded >= ? AND forwarded <= ? ORDER BY seq",
                (since, until if until is not None else time.time() + 1),
            ).fetchall()

    def acted_on(self, seqs: list[int]) -> None:
        now = time.time()
        with self._lock:
            self._db.executemany("UPDATE alerts SET acted = ? WHERE seq = ?", [(now, s) for s in seqs])

    def resend(self, seq: int, make_event: Callable[[dict[str, Any], int], dict[str, Any]]) -> str:
        """Queue the alert `seq` again, its event rewritten by `make_event(event dict,
        resends so far)` (a new id); returns the new event id."""
        with self._lock:
            event, resends = self._db.execute("SELECT event, resends FROM alerts WHERE seq = ?", (seq,)).fetchone()
            new = make_event(json.loads(event), resends)
            self._db.execute(
                "UPDATE alerts SET event = ?, event_id = ?, forwarded = NULL, resends = resends + 1 WHERE seq = ?",
                (json.dumps(new), new["id"], seq),
            )
        return new["id"]

    def resends_of(self, seq: int) -> int:
        with self._lock:
            return self._db.execute("SELECT resends FROM alerts WHERE seq = ?", (seq,)).fetchone()[0]

    def counts(self) -> dict[str, int]:
        """How many alerts are pending, coalesced, re-sent and acted on."""
        with self._lock:
            row = self._db.execute(
                "SELECT sum(forwarded IS NULL), sum(coalesced_into IS NOT NULL), sum(resends), sum(acted IS NOT NULL) "
                "FROM alerts"
            ).fetchone()
        return dict(zip(("pending", "coalesced", "resent", "acted"), (int(v or 0) for v in row), strict=True))

    # -- state ---------------------------------------------------------------------------
    def depth(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM alerts WHERE forwarded IS NULL").fetchone()[0]

    def oldest_age(self) -> float:
        with self._lock:
            row = self._db.execute("SELECT min(received) FROM alerts WHERE forwarded IS NULL").fetchone()
        return max(0.0, time.time() - row[0]) if row and row[0] else 0.0

    def prune(self, older_than_seconds: float) -> None:
        """Forget forwarded alerts older than the dedup window."""
        with self._lock:
            self._db.execute(
                "DELETE FROM alerts WHERE forwarded IS NOT NULL AND forwarded < ?", (time.time() - older_than_seconds,)
            )

    def problem(self) -> str | None:
        """What keeps the spool from storing (a corrupted page, ...), or None. A check
        reads every page (PRAGMA quick_check) holding the spool's lock: it is made at most
        once per CHECK_SECONDS, as /ready, which anyone may ask, had it made at each call
        (a stream of /ready requests then held the stores of alerts back)."""
        now = time.monotonic()
        with self._lock:
            if self._checked is not None and now - self._checked[0] < CHECK_SECONDS:
                return self._checked[1]
            try:
                rows = self._db.execute("PRAGMA quick_check(3)").fetchall()
            except sqlite3.Error as exc:
                found = f"spool {self.path} cannot be read: {exc}"
            else:
                bad = [row[0] for row in rows if row[0] != "ok"]
                found = f"spool {self.path} is corrupted: {'; '.join(bad)}" if bad else None
            self._checked = (now, found)
            return found

    def close(self) -> None:
        with self._lock:
            self._db.close()
