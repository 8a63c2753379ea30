"""The bridge's durable spool: alerts stored in SQLite until Prefect accepted their events."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path


class Spool:
    """Alerts stored durably until the Prefect API accepted their events."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
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

    def store(self, items: list[tuple[str, str, float]]) -> tuple[int, list[str]]:
        """Insert (key, event json, received); returns (new count, duplicate keys)."""
        duplicates = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for key, event, received in items:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO alerts (key, event, received) VALUES (?, ?, ?)", (key, event, received)
                    )
                    if cur.rowcount == 0:
                        duplicates.append(key)
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite already rolled back after some errors (a full disk): a second
                # ROLLBACK would raise "cannot rollback" and hide the cause
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return len(items) - len(duplicates), duplicates

    def pending(self, limit: int) -> list[tuple[int, str]]:
        with self._lock:
            return self._db.execute(
                "SELECT seq, event FROM alerts WHERE forwarded IS NULL ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()

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
        """What keeps the spool from storing (a corrupted page, ...), or None."""
        try:
            with self._lock:
                rows = self._db.execute("PRAGMA quick_check(3)").fetchall()
        except sqlite3.Error as exc:
            return f"spool {self.path} cannot be read: {exc}"
        found = [row[0] for row in rows if row[0] != "ok"]
        return f"spool {self.path} is corrupted: {'; '.join(found)}" if found else None

    def close(self) -> None:
        with self._lock:
            self._db.close()
