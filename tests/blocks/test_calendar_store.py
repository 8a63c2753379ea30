"""The calendar's entries as keyed artifacts on a real Prefect server (calendar_store.py)."""

from __future__ import annotations

import time
import uuid

from prefect.client.orchestration import get_client

from planflow.prefect.calendar_store import (
    ENTRY_TYPE,
    CalendarEntry,
    create_entry,
    delete_run_entries,
    entry_key,
    read_entries,
    update_entry,
)


def _entry(run: str, n: int = 2) -> CalendarEntry:
    now = time.time()
    return CalendarEntry(
        flow_run_id=run,
        flow_run_name="stored-run",
        pipeline="stored",
        planned_at=now,
        eta=now + 10,
        reservations=[
            {"component": f"c{i}", "pool": "p", "start": now + i, "finish": now + i + 1, "demand": {"cpu": 1.0}}
            for i in range(n)
        ],
    )


def _mine(client, run: str) -> list[CalendarEntry]:
    return [entry for _, entry in read_entries(client) if entry.flow_run_id == run]


def test_an_entry_is_created_rewritten_read_back_and_deleted_with_every_version(prefect_server):
    run = str(uuid.uuid4())
    with get_client(sync_client=True) as client:
        first = _entry(run)
        saved = create_entry(client, first.model_dump(mode="json"))
        assert _mine(client, run) == [first]

        moved = _entry(run, n=3)
        assert update_entry(client, saved, moved.model_dump(mode="json"))
        assert _mine(client, run) == [moved]  # the latest data, one entry per run

        # an earlier attempt's entry left under the same key: deleting the run's entry takes
        # every version, or the older one would come back as the run's entry
        create_entry(client, first.model_dump(mode="json"))
        assert len(_mine(client, run)) == 1
        assert delete_run_entries(client, run) == 2
        assert _mine(client, run) == []
        assert not update_entry(client, saved, moved.model_dump(mode="json"))  # gone: no error, False


def test_an_artifact_of_the_entries_type_that_is_not_an_entry_is_skipped(prefect_server):
    run = str(uuid.uuid4())
    with get_client(sync_client=True) as client:
        body = {"key": entry_key(run), "type": ENTRY_TYPE, "data": {"written": "by hand"}}
        client.request("POST", "/artifacts/", json=body)
        try:
            assert all(isinstance(entry, CalendarEntry) for _, entry in read_entries(client))
            assert _mine(client, run) == []
        finally:
            delete_run_entries(client, run)
