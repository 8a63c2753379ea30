"""From a flow run's start to its first component: the server round trips on that path are
few and read each thing once (real Prefect server; counted, not timed: the timings are
bench/bench_overhead.py's)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from prefect.runtime import flow_run

from planflow import to_flow
from planflow.core.component import component
from planflow.core.pipeline import Pipeline, Step
from planflow.ops.processes import wait_until
from planflow.runtime.calendar import read_calendar
from planflow.runtime.events import Reporter, subscribe

from tests.flows.own_pool import own_pool

POOL = "first-release"
CAPACITY = {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}
# Threads that are off the path by design: reporters (the bus and its helpers), re-planning, the entry's saver, the
# planning slot's release, the server watchdog.
OFF_PATH = (
    "planflow-report",
    "planflow-replan",
    "planflow-calendar",
    "planflow-planning",
    "planflow-server",
    "planflow-event-watch",  # the blocks' event watch (event_watch.py): its probe, once per process
)
# (the entry's first save, "planflow-entry-save", goes once the first slots were asked: run_calendar.slots_asked)
# Before: 16 requests one after another from the flow run's start to its first component;
# then 9: Prefect's own two (the flow run, its storage), the reads side by side, the history,
# the planning slot, the calendar, the entry's write, the first slots side by side.
# Then (4 seen): Prefect's two, the reads with the planning slot and the calendar read under
# it beside them, the entry's save beside the first slots, (the slot given back after the save).
# Now (3 seen): Prefect's two, the entry's save beside the first slots: a called flow's reads,
# planning slot and calendar included, go while Prefect creates its run (early_reads.py).
MAX_ROUNDS = 4
ATTEMPTS = 3  # runs measured at most, until one keeps to MAX_ROUNDS
BLOCKS = "/api/block_documents/filter"  # the pools and the settings: kept between runs (event_watch.py)
# What a called flow reads on its early threads, once each, before its run's body (the
# blocks too, unless this process kept them from its last run)
EARLY = sorted(
    [
        "/api/v2/concurrency_limits/filter",  # the limits
        "/api/artifacts/filter",  # how late earlier runs finished
        "/api/artifacts/filter",  # the components' history
        "/api/v2/concurrency_limits/increment-with-lease",  # the planning slot
        "/api/artifacts/latest/filter",  # the calendar, read under it
    ]
)

SEEN: list[bool] = []  # per component run: whether its run's calendar entry existed then


# a run's entry is saved this soon after its first slots were asked: one artifact write,
# tens of milliseconds on a quiet server, more on a loaded CI machine (a fixed 0.3 s sleep was)
ENTRY_SAVED_WITHIN_SECONDS = 3.0


def entry_present(x: int = 1) -> int:
    """A component holding its slots: its run's calendar entry exists meanwhile, saved
    within its first moments (the first components start beside the save, which waits for
    their slots to be asked first: run_calendar.slots_asked)."""

    def saved() -> bool:
        return any(e.flow_run_id == flow_run.id for e in read_calendar(clean=False))

    SEEN.append(wait_until(saved, ENTRY_SAVED_WITHIN_SECONDS, interval=0.05))
    return x


class Requests:
    """Every HTTP request this process sends: (start, end, thread, method, path)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[tuple[float, float, str, str, str]] = []
        send, asend = httpx.Client.send, httpx.AsyncClient.send

        def timed(request: httpx.Request, started: float) -> None:
            thread = threading.current_thread().name
            self.sent.append((started, time.time(), thread, request.method, request.url.path))

        def sync_send(client, request, *args, **kwargs):
            started = time.time()
            try:
                return send(client, request, *args, **kwargs)
            finally:
                timed(request, started)

        async def async_send(client, request, *args, **kwargs):
            started = time.time()
            try:
                return await asend(client, request, *args, **kwargs)
            finally:
                timed(request, started)

        monkeypatch.setattr(httpx.Client, "send", sync_send)
        monkeypatch.setattr(httpx.AsyncClient, "send", async_send)


class FirstRelease(Reporter):
    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def on_step(self, event) -> None:
        if event.kind == "started":
            run = event.run.flow_run_id
            self.at[run] = min(self.at.get(run, event.at), event.at)


def rounds(requests: list[tuple[float, float, str, str, str]]) -> int:
    """How many requests were waited for one after another: a request that starts after
    every earlier one ended begins a new round; overlapping ones share a round."""
    count, end = 0, float("-inf")
    for started, ended, *_ in sorted(requests):
        if started >= end:
            count += 1
        end = max(end, ended)
    return count


@pytest.fixture(scope="module")
def pool(registered_blocks):
    with own_pool(POOL, CAPACITY) as name:
        yield name


def test_the_first_component_comes_after_few_rounds_of_requests_and_holds_its_slots_in_the_calendar(pool, monkeypatch):
    comp = component(entry_present, cpu=0.1, mem_gib=0.01, est_seconds=0.05, pools=[POOL])
    run = to_flow(Pipeline("first-release", [Step(f"c{i}", comp) for i in range(6)], description="6 trivial"))
    run(local_pool=POOL)  # warm: this process's first run
    requests = Requests(monkeypatch)
    listings = []
    # Rounds are told apart by time: on a loaded machine, requests meant side by side can
    # miss each other and count as two rounds, never the reverse (a request sent after
    # another's answer always starts a round). So the fewest rounds of a few runs is the
    # path's: an extra request on it shows in every run.
    for _ in range(ATTEMPTS):
        first = FirstRelease()
        unsubscribe = subscribe(first)
        SEEN.clear()
        requests.sent.clear()
        try:
            summary = run(local_pool=POOL)
        finally:
            unsubscribe()
        run_id = summary["flow_run_id"]
        assert {s["state"] for s in summary["steps"].values()} == {"Completed"}
        assert SEEN == [True] * 6  # every component ran while its run's entry was in the calendar

        sent = [r for r in requests.sent if "/logs" not in r[4] and "/events" not in r[4]]
        running = min(r[1] for r in sent if r[4] == f"/api/flow_runs/{run_id}/set_state")  # the Running state
        released = first.at[run_id]
        path = [r for r in sent if running <= r[0] < released and not r[2].startswith(OFF_PATH)]
        listing = "\n".join(f"{a - running:6.3f} {b - a:6.3f} {t} {m} {p}" for a, b, t, m, p in sorted(path))
        listings.append(listing)
        if rounds(path) <= MAX_ROUNDS:
            break
    assert rounds(path) <= MAX_ROUNDS, "\n\n".join(listings)
    # the pools and the settings read at most once per run, in one request (none when kept
    # from the last run), and no block type or schema registered on the way
    blocks = [r for r in sent if "/block_documents" in r[4]]
    assert [r[4] for r in blocks] in ([], [BLOCKS]), listing
    # ... on the early threads, with the other reads, and none of them again in the run's body
    # (the limits on the calling thread, before the flow run is created: the first request alone)
    created = min(r[0] for r in sent if r[3] == "POST" and r[4] == "/api/flow_runs/")
    caller = threading.current_thread().name
    early = sorted(
        r[4]
        for r in sent
        if r[4] in EARLY and (r[2].startswith("planflow-early") or (r[2] == caller and r[0] < created))
    )
    assert early == EARLY, early
    assert all(r[2].startswith("planflow-early") for r in blocks), blocks
    again = [r for r in sent if r[2].startswith("planflow-read") and r[4] in (*EARLY, BLOCKS)]
    assert not again, again
    # the call's new Prefect client asks for a CSRF token once, not once per thread (Prefect's
    # async client, on its own loop, asks for its own: after the run, which can fall at the
    # start of the next run's window, one run in five here)
    # (the blocks' event watch posts its probe with a client of its own, once per process)
    off = ("GlobalEventLoopThread", "planflow-event-watch")
    tokens = [r for r in sent if r[4] == "/api/csrf-token" and r[0] < released and r[2] not in off]
    assert len(tokens) <= 1, tokens
    # the entry's first save goes after the first slots were asked for: the server answers those first
    saves = sorted(r for r in sent if r[2] == "planflow-entry-save" and r[3] == "POST")
    takes = sorted(r for r in sent if "increment-with-lease" in r[4] and r[0] > running)
    assert saves, listing
    if takes:  # none when the slots were leases this process's last run left (spare_leases.py)
        assert saves[0][0] >= takes[0][1], listing
    registering = [r for r in sent if "/block_types/" in r[4] and "/block_documents" not in r[4] or "checksum" in r[4]]
    assert not registering, registering
