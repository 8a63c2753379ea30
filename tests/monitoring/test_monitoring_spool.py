"""The bridge's spool file: a version-1 file (before delivery tracking) is migrated in
place, its rows kept; storm alerts are grouped by alert name and pool."""

from __future__ import annotations

import json
import sqlite3

from planflow.monitoring.bridge.delivery import COALESCED_EVENT, Coalescer
from planflow.monitoring.bridge.spool import SCHEMA_VERSION, Spool, tracking

V1 = """
CREATE TABLE alerts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    event TEXT NOT NULL,
    received REAL NOT NULL,
    forwarded REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX alerts_pending ON alerts (forwarded, seq);
"""


def _event(pool: str, status: str = "firing") -> dict:
    return {
        "id": f"id-{pool}-{status}",
        "event": f"planflow.alert.{status}",
        "resource": {"prefect.resource.id": f"prefect.work-pool.{pool}", "planflow.alert.name": "PoolDown"},
        "payload": {"status": status},
    }


def test_a_version_1_spool_file_is_migrated_with_its_rows(tmp_path):
    path = tmp_path / "spool.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(V1)
    db.execute("INSERT INTO alerts (key, event, received) VALUES ('k1', ?, 1.0)", (json.dumps(_event("a")),))
    db.execute("INSERT INTO alerts (key, event, received, forwarded) VALUES ('k2', '{}', 1.0, 2.0)")
    db.commit()
    db.close()

    spool = Spool(path)
    try:
        [row] = spool.pending(10)
        assert row.seq == 1 and row.grp is None  # an old row: delivered as before, not tracked
        assert spool.depth() == 1
        stored, _ = spool.store([("k3", json.dumps(_event("b")), 3.0)])
        assert stored == 1
        assert spool.pending(10)[-1].grp == "PoolDown|prefect.work-pool.b"
    finally:
        spool.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    columns = {row[1] for row in db.execute("PRAGMA table_info(alerts)")}
    assert {"grp", "status", "event_id", "acted", "coalesced_into", "resends"} <= columns
    db.close()
    Spool(path).close()  # opening a migrated file again changes nothing


def test_only_pool_and_queue_alerts_are_tracked():
    assert tracking(_event("p"))[0] == "PoolDown|prefect.work-pool.p"
    pipeline = {**_event("p"), "resource": {"prefect.resource.id": "planflow.pipeline.x"}}
    assert tracking(pipeline)[0] is None


def _store(spool: Spool, key: str, event: dict) -> None:
    spool.store([(key, json.dumps(event), 1.0)])


def test_a_storm_is_coalesced_into_one_alert_until_the_other_status_arrives(tmp_path):
    spool = Spool(tmp_path / "spool.sqlite3")
    coalescer = Coalescer(spool, window=60)
    try:
        for i in range(5):
            _store(spool, f"a{i}", {**_event("a"), "id": f"a{i}"})
        _store(spool, "b0", {**_event("b"), "id": "b0"})
        rows = spool.pending(10)
        events, pairs = coalescer.plan(rows, now=100.0)
        names = [json.loads(e)["event"] for e in events]
        assert names == ["planflow.alert.firing", *[COALESCED_EVENT] * 4, "planflow.alert.firing"]
        assert pairs == [(rows[i].seq, rows[0].seq) for i in range(1, 5)]
        assert json.loads(events[1])["payload"]["coalesced_into"] == "a0"
        spool.mark([r.seq for r in rows])
        spool.coalesce(pairs)

        # later: one more firing is coalesced into the one sent; a resolved is not, and
        # after it a new firing is sent on its own (a re-fire must be acted on)
        _store(spool, "a5", {**_event("a"), "id": "a5"})
        _store(spool, "r0", {**_event("a", "resolved"), "id": "r0"})
        _store(spool, "a6", {**_event("a"), "id": "a6"})
        events, pairs = coalescer.plan(spool.pending(10), now=spool.leader("PoolDown|prefect.work-pool.a", 0).forwarded)
        assert [json.loads(e)["event"] for e in events] == [
            COALESCED_EVENT,
            "planflow.alert.resolved",
            "planflow.alert.firing",
        ]
        # outside the window nothing is coalesced
        events, _ = coalescer.plan(spool.pending(10), now=10_000_000_000.0)
        assert COALESCED_EVENT not in [json.loads(e)["event"] for e in events]
    finally:
        spool.close()


def test_the_integrity_check_is_made_at_most_once_per_interval(tmp_path, monkeypatch):
    """/ready, which anyone may ask, ran PRAGMA quick_check (every page read, the spool's
    lock held) at each call: a stream of them held the stores of alerts back."""
    from planflow.monitoring.bridge import spool as spool_module

    spool = Spool(tmp_path / "spool.sqlite3")
    checks = []
    spool._db.set_trace_callback(lambda sql: checks.append(sql) if "quick_check" in sql else None)
    assert [spool.problem() for _ in range(50)] == [None] * 50
    assert len(checks) == 1, checks
    monkeypatch.setattr(spool_module, "CHECK_SECONDS", 0.0)  # the interval passed: checked again
    assert spool.problem() is None and len(checks) == 2
    spool.close()


def test_with_a_faked_prefect_a_5xx_amid_one_by_one_sends_loses_no_coalescing(tmp_path):
    """Faked Prefect (httpx's MockTransport: a real server does not answer 422 to a batch
    and then 503 to one event on demand). After a 422, the events go one by one; a 503
    half-way left the rows sent before it forwarded but not coalesced, so they counted as
    leaders never acted on (sent again after a Prefect restart)."""
    import asyncio

    import httpx
    from prometheus_client import CollectorRegistry

    from planflow.monitoring.bridge.forwarder import Forwarder
    from planflow.monitoring.metrics import BridgeMetrics

    spool = Spool(tmp_path / "spool.sqlite3")
    for i in range(4):
        _store(spool, f"a{i}", {**_event("a"), "id": f"a{i}"})
    busy_once = {"a2"}

    def prefect(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        if len(sent) > 1:
            return httpx.Response(422, json={"detail": "one of them is bad"})
        if sent[0]["id"] in busy_once:  # a coalesced event keeps its own id
            busy_once.discard(sent[0]["id"])
            return httpx.Response(503)
        return httpx.Response(200)

    forwarder = Forwarder(spool, BridgeMetrics(CollectorRegistry()), "http://prefect.invalid/api")

    async def forward() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(prefect)) as http:
            try:
                await forwarder.forward_once(http)
            except httpx.HTTPStatusError:
                pass  # the 503: retried from there
            await forwarder.forward_once(http)

    asyncio.run(forward())
    assert spool.pending(10) == []
    assert [event_id for _, event_id in spool.unconfirmed(0)] == ["a0"]  # the rest went as coalesced into it
    spool.close()
