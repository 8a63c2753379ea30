"""The Prefect server planflow starts (ops/prefect_server.py) begins every SQLite write
transaction IMMEDIATE: concurrent writers that read first (slot increments, which read
their limits and then update them) queue on SQLite's busy timeout instead of failing
with "database is locked" (a 503 that Prefect's client sleeps 2 s or more on)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from planflow.ops import prefect_server

WRITERS = 8
ROUNDS = 8  # slot takes per writer
LIMIT = 3
DROPPED = -1  # a request whose connection the server closed (counted with the answers)
DECREMENT = "/v2/concurrency_limits/decrement-with-lease"
WAIT_S = 120.0  # bound on the whole workload (64 takes and releases: seconds when idle)


def test_the_patch_refuses_a_prefect_whose_code_moved(monkeypatch):
    from prefect.server.database.configurations import AioSqliteConfiguration

    before = AioSqliteConfiguration.__dict__["begin_transaction"]
    monkeypatch.setattr(prefect_server, "_EXPECTED_SOURCE", {"begin_transaction": "no such line"})
    with pytest.raises(prefect_server.PrefectChanged) as refused:
        prefect_server.patch_sqlite_writes()
    assert "checked against prefect 3.8.8" in str(refused.value)
    assert "begin_transaction no longer contains 'no such line'" in str(refused.value)
    assert "Fix: install prefect==3.8.8" in str(refused.value)
    assert AioSqliteConfiguration.__dict__["begin_transaction"] is before  # nothing half-patched


def test_a_write_transaction_begins_immediate_and_a_session_opened_inside_it_deferred():
    transaction = prefect_server._WriteTransaction()
    assert [transaction.mode(), transaction.mode(), transaction.mode()] == ["IMMEDIATE", "DEFERRED", "DEFERRED"]


def test_concurrent_slot_takes_meet_no_busy_database_and_never_exceed_the_limit(prefect_server):
    """WRITERS threads take and give back one slot of a limit of LIMIT, ROUNDS times each,
    with plain httpx (a 503 is seen, not retried away as Prefect's client does). On
    Prefect's own server the same workload met 187 503s ("database is locked") and 182
    dropped connections for its 64 takes."""
    api = prefect_server.url
    name = f"sqlite-busy-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=api, timeout=30) as client:
        client.post("/v2/concurrency_limits/", json={"name": name, "limit": LIMIT}).raise_for_status()
    lock = threading.Lock()
    answers: dict[int, int] = {}
    active_seen: list[int] = []
    over = threading.Event()

    def post(client: httpx.Client, path: str, body: dict) -> httpx.Response | None:
        try:
            response = client.post(path, json=body)
        except httpx.TransportError:  # after an error the server closes the connection: the next request on it fails
            response = None
        code = response.status_code if response is not None else DROPPED
        with lock:
            answers[code] = answers.get(code, 0) + 1
        return response

    def writer(_: int) -> None:
        with httpx.Client(base_url=api, timeout=WAIT_S) as client:
            taken = 0
            while taken < ROUNDS and not over.is_set():
                response = post(
                    client,
                    "/v2/concurrency_limits/increment-with-lease",
                    {"names": [name], "slots": 1, "mode": "concurrency", "lease_duration": 60},
                )
                if response is not None and response.status_code == 423:  # the limit is full: ask again soon
                    over.wait(0.01)
                    continue
                if response is None or response.status_code != 200:
                    continue  # a 503 or a dropped connection: counted, asked again
                held = client.get(f"/v2/concurrency_limits/{name}").json()["active_slots"]  # while holding
                with lock:
                    active_seen.append(held)
                release = {"lease_id": response.json()["lease_id"]}
                while getattr(post(client, DECREMENT, release), "status_code", 0) != 204:
                    if over.is_set():
                        return
                taken += 1

    timer = threading.Timer(WAIT_S, over.set)
    timer.start()
    try:
        with ThreadPoolExecutor(WRITERS) as pool:
            list(pool.map(writer, range(WRITERS)))
    finally:
        timer.cancel()
    with httpx.Client(base_url=api, timeout=30) as client:
        limit = client.get(f"/v2/concurrency_limits/{name}").json()
        client.delete(f"/v2/concurrency_limits/{name}")
    assert not over.is_set(), f"the writers did not finish within {WAIT_S} s: answers {answers}"
    busy = answers.get(503, 0) + answers.get(DROPPED, 0)
    assert busy == 0, f"'database is locked' (503; {DROPPED}: a dropped connection): {answers}"
    assert answers[200] == WRITERS * ROUNDS and answers[204] == WRITERS * ROUNDS, answers
    assert len(active_seen) == WRITERS * ROUNDS and 1 <= min(active_seen) and max(active_seen) <= LIMIT, active_seen
    assert limit["active_slots"] == 0, f"slots taken twice or not given back: {limit}"


@pytest.mark.slow
def test_slots_held_across_a_server_restart_come_back_when_their_lease_ends():
    """Prefect keeps slot leases in its server's memory by default: a restart lost the
    leases while their slots stayed taken in the database, and nothing gave them back (a
    new user's pool stayed "full", later runs waiting up to PLANFLOW_SLOT_WAIT_SECONDS).
    planflow's server keeps them on disk: the repossessor ends them after a restart too."""
    import time

    from planflow.ops import server
    from planflow.settings import StatePaths

    from tests.conftest import own_temp_folder

    paths = StatePaths(own_temp_folder("planflow-leases-"))
    name = f"restart-{uuid.uuid4().hex[:8]}"
    try:
        api = server.up(paths, port=server.free_port()).url
        with httpx.Client(base_url=api, timeout=30) as client:
            client.post("/v2/concurrency_limits/", json={"name": name, "limit": 4}).raise_for_status()
            body = {"names": [name], "slots": 3, "mode": "concurrency", "lease_duration": 60}
            client.post("/v2/concurrency_limits/increment-with-lease", json=body).raise_for_status()
        assert list((paths.prefect_home / "concurrency_leases").glob("*.json")), "no lease kept on disk"
        server.down(paths)  # the run that held them is gone with it (exit 75), its lease not given back
        api = server.up(paths, port=server.free_port()).url
        taken = time.monotonic()
        bound = 60 + 15 + 45  # the lease, the repossessor's loop (15 s), a loaded machine
        with httpx.Client(base_url=api, timeout=30) as client:
            while (held := client.get(f"/v2/concurrency_limits/{name}").json()["active_slots"]) > 0:
                assert time.monotonic() - taken < bound, f"{held} slots still held {bound} s after the restart"
                time.sleep(1)
    finally:
        server.down(paths)
