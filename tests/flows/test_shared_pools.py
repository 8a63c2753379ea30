"""Pools shared across runs, against a real Prefect server: admission through global
concurrency limits, the pool calendar, ETA and `planflow calendar`.

Runs start in processes of their own (as scheduled deployments would), released together
by a file so that they overlap; components write when they ran, and the test adds up the
declared cpu of the components running at each instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import shared_pools_dags as dags
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Crashed
from typer.testing import CliRunner

from planflow import to_flow
from planflow.cli.app import app
from planflow.ops.server import free_port
from planflow.prefect.blocks import ResourcePool, load_pools
from planflow.prefect.calendar_store import CalendarEntry, save_entry
from planflow.prefect.limits import (
    LimitDriftError,
    active_slots,
    limit_drift,
    limit_name,
    pool_limits,
    require_limits,
    sync_limits,
    turn_limit,
)
from planflow.runtime.admission import AdmissionError, SharedSlots
from planflow.runtime.calendar import read_calendar
from planflow.runtime.dispatch import Assignment
from planflow.runtime.events import Reporter, subscribe

from tests.conftest import TESTS
from tests.flows.own_pool import own_pool

pytestmark = pytest.mark.usefixtures("registered_blocks")

POOL = "shared-duo"
CAPACITY = {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}
CPU = limit_name(POOL, "cpu")
LEASE_SECONDS = 60.0  # Prefect's shortest lease
REPOSSESSOR_SECONDS = 15.0  # how often the server looks for expired leases (its default)
NOISE_SECONDS = 5.0  # how far from its planned start a component may start (see its test)

RUNNER = """
import json, pathlib, sys, time
import shared_pools_dags as dags
from planflow import to_flow
pathlib.Path(sys.argv[2]).write_text("ready")
deadline = time.monotonic() + 180
while not pathlib.Path(sys.argv[3]).exists():
    assert time.monotonic() < deadline, "never released"
    time.sleep(0.05)
to_flow(getattr(dags, sys.argv[1]))(local_pool=sys.argv[4], **json.loads(sys.argv[5]))
"""


@pytest.fixture(scope="module")
def pool():
    """A 2-cpu pool of its own, removed after the module: other tests plan over every pool."""
    with own_pool(POOL, CAPACITY) as name:
        yield name


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PLANFLOW_INTERVALS=str(tmp / "intervals.tsv"), **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS / "fixtures"), str(TESTS.parent), env.get("PYTHONPATH", "")])
    return env


def _start_runs(tmp: Path, runs: list[tuple[str, dict]], env: dict[str, str]) -> list[subprocess.Popen]:
    """Start each run in a process of its own; release them together once all are ready."""
    go = tmp / "go"
    procs = []
    for i, (pipeline, params) in enumerate(runs):
        ready = tmp / f"ready-{i}"
        args = [sys.executable, "-c", RUNNER, pipeline, str(ready), str(go), POOL, json.dumps(params)]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + 180
    while not all((tmp / f"ready-{i}").exists() for i in range(len(runs))):
        for p in procs:
            assert p.poll() is None, p.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the run processes did not get ready"
        time.sleep(0.1)
    go.write_text("go")
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = 300) -> None:
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out[-4000:]


def _intervals(tmp: Path) -> list[tuple[str, str, float, float, float]]:
    rows = []
    for line in (tmp / "intervals.tsv").read_text().splitlines():
        run, name, cpu, start, end = line.split("\t")
        rows.append((run, name, float(cpu), float(start), float(end)))
    return rows


def peak_cpu(rows: list[tuple[str, str, float, float, float]]) -> float:
    """The most cpu declared by components running at one instant (ends before starts)."""
    events = sorted([(s, 1, cpu) for _, _, cpu, s, _ in rows] + [(e, 0, -cpu) for _, _, cpu, _, e in rows])
    peak = used = 0.0
    for _, _, delta in events:
        used += delta
        peak = max(peak, used)
    return peak


def _overlapped(rows: list[tuple[str, str, float, float, float]]) -> bool:
    spans = {}
    for run, _, _, s, e in rows:
        a, b = spans.get(run, (s, e))
        spans[run] = (min(a, s), max(b, e))
    (a1, b1), (a2, b2) = list(spans.values())[:2]
    return a1 < b2 and a2 < b1


# -- the limits follow the blocks ---------------------------------------------------------
def test_limits_follow_the_pool_block_and_a_hand_change_is_named(pool):
    with get_client(sync_client=True) as client:
        for name, size in pool_limits(POOL, CAPACITY).items():
            assert client.read_global_concurrency_limit_by_name(name).limit == size
        client.update_global_concurrency_limit(CPU, GlobalConcurrencyLimitUpdate(limit=5000))
    with pytest.raises(LimitDriftError) as err:
        require_limits({POOL: CAPACITY})
    assert f"concurrency limit '{CPU}' is 5000 slots but ResourcePool '{POOL}' says cpu=2 (2000 slots)" in str(
        err.value
    )
    assert "planflow pools sync" in str(err.value)
    assert sync_limits({POOL: CAPACITY}) == [f"limit {CPU}: 5000 -> 2000 slots"]
    assert limit_drift({POOL: CAPACITY}) == ([], [])


def test_runs_that_create_a_new_pools_limits_at_once_agree_and_pools_sync_checks_them(pool):
    capacity = {"cpu": 3.5, "gpu": 1.0, "mem_gib": 2.0}
    errors: list[BaseException] = []

    def sync() -> None:
        try:
            sync_limits({"shared-new": capacity})
        except BaseException as exc:  # collected: the test names it
            errors.append(exc)

    threads = [threading.Thread(target=sync) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert limit_drift({"shared-new": capacity}) == ([], [])
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(limit_name("shared-new", "cpu")).limit == 3500
        client.update_global_concurrency_limit(limit_name("shared-new", "gpu"), GlobalConcurrencyLimitUpdate(limit=7))
    ResourcePool(work_pool="local-process", cpu=3.5, gpu=1, mem_gib=2).save("shared-new", overwrite=True)
    try:
        checked = CliRunner().invoke(app, ["pools", "sync", "--check"])
        assert checked.exit_code == 1, checked.output
        assert "concurrency limit 'planflow-shared-new-gpu' is 7 slots" in checked.output
        synced = CliRunner().invoke(app, ["pools", "sync"])
        assert "limit planflow-shared-new-gpu: 7 -> 1 slots" in synced.output, synced.output
        assert CliRunner().invoke(app, ["pools", "sync", "--check"]).exit_code == 0
    finally:
        ResourcePool.delete("shared-new")  # other tests plan over every pool there is


def test_pools_rm_removes_the_block_and_its_limits_but_not_a_pool_in_use_nor_local():
    ResourcePool(work_pool="local-process", cpu=1, gpu=0, mem_gib=1).save("rm-me", overwrite=True)
    ResourcePool(work_pool="local-process", cpu=1, gpu=0, mem_gib=1, backup_pool="rm-me").save(
        "rm-backed", overwrite=True
    )
    sync_limits({"rm-me": {"cpu": 1, "gpu": 0, "mem_gib": 1}})
    names = [*(limit_name("rm-me", r) for r in ("cpu", "gpu", "mem_gib")), turn_limit("rm-me")]
    try:
        backed = CliRunner().invoke(app, ["pools", "rm", "rm-me"])
        assert backed.exit_code == 2 and "pool 'rm-me' is the backup_pool of rm-backed" in backed.output, backed.output
        ResourcePool.delete("rm-backed")
        held = SharedSlots().take(Assignment("s", "rm-me", {"cpu": 1, "mem_gib": 0.5}, 0))
        assert held is not None
        try:
            busy = CliRunner().invoke(app, ["pools", "rm", "rm-me"])
            assert busy.exit_code == 1, busy.output
            assert "pool 'rm-me' is in use: planflow-rm-me-cpu-millicores has 1000 slots held" in busy.output
            assert set(active_slots(names)) == set(names)  # nothing deleted
            with get_client(sync_client=True) as client:
                assert client.read_global_concurrency_limit_by_name(names[0]).limit == 1000
        finally:
            held.close()
        removed = CliRunner().invoke(app, ["pools", "rm", "rm-me"])
        assert removed.exit_code == 0, removed.output
        assert "pool rm-me: removed" in removed.output
        assert all(f"limit {name}: deleted" in removed.output for name in names), removed.output
        assert "rm-me" not in load_pools()
        with get_client(sync_client=True) as client:
            assert not [n for n in names if _exists(client, n)]
        again = CliRunner().invoke(app, ["pools", "rm", "rm-me"])
        assert again.exit_code == 2 and "no pool named 'rm-me'. Known pools:" in again.output, again.output
        local = CliRunner().invoke(app, ["pools", "rm", "local"])
        assert local.exit_code == 2 and "pool 'local' is the pool in-process runs use" in local.output
    finally:
        for name in ("rm-me", "rm-backed"):
            with contextlib.suppress(ValueError):
                ResourcePool.delete(name)


def _exists(client, name: str) -> bool:
    try:
        client.read_global_concurrency_limit_by_name(name)
        return True
    except ObjectNotFound:
        return False


def test_a_step_takes_all_of_its_slots_or_none(pool):
    """Memory is all held elsewhere: the step's cpu slots are given back at once."""
    mem = limit_name(POOL, "mem_gib")
    step = Assignment("s", POOL, {"cpu": 1, "mem_gib": 1}, 0)
    hog = SharedSlots().take(Assignment("hog", POOL, {"mem_gib": 4}, 0))
    assert hog is not None
    try:
        assert SharedSlots().take(step) is None
        assert active_slots([CPU, mem]) == {CPU: 0, mem: 4096}
    finally:
        hog.close()
    held = SharedSlots().take(step)
    assert held is not None and active_slots([CPU, mem]) == {CPU: 1000, mem: 1024}
    held.close()
    assert active_slots([CPU, mem]) == {CPU: 0, mem: 0}


def test_prefect_down_while_asking_for_slots_is_a_bounded_wait_and_a_clear_error(pool):
    slots = SharedSlots(server_wait_seconds=2)
    dead = f"http://127.0.0.1:{free_port()}/api"
    step = Assignment("s", "shared-down", {"cpu": 1}, 0)
    started = time.monotonic()
    with temporary_settings({PREFECT_API_URL: dead}):
        with pytest.raises(AdmissionError) as err:
            while time.monotonic() - started < 60:
                assert slots.take(step) is None
                time.sleep(0.2)
    assert time.monotonic() - started < 60
    message = str(err.value)
    assert f"the Prefect server at {dead} did not answer for 2 s" in message
    assert "Nothing is held" in message and "planflow server up" in message


# -- two and more runs on one pool --------------------------------------------------------
@pytest.mark.parametrize(
    ("shared", "hold"),
    [(True, False), (True, True), (False, False)],
    ids=["shared-slots", "shared-slots-held-to-calendar", "prefect-default-no-shared-ledger"],
)
def test_concurrent_runs_on_one_pool_never_exceed_its_capacity(pool, tmp_path, shared, hold):
    """Three runs of three cpu=1 steps side by side on a 2-cpu pool, released together:
    with shared slots the cpu of running components never exceeds 2 (also when each step
    waits for its planned start, PLANFLOW_HOLD_TO_CALENDAR); without (the control, each
    run believing it has the pool to itself) it does."""
    env = _env(tmp_path, PLANFLOW_SHARED_SLOTS=str(shared).lower(), PLANFLOW_HOLD_TO_CALENDAR=str(hold).lower())
    _wait(_start_runs(tmp_path, [("wide", {"seconds": 3.0})] * 3, env))
    rows = _intervals(tmp_path)
    assert len(rows) == 12
    if shared:  # full, never over; the runs may well follow one another: each was planned after the other
        assert peak_cpu(rows) == CAPACITY["cpu"]
    else:
        assert _overlapped(rows) and peak_cpu(rows) > CAPACITY["cpu"]
    assert active_slots([CPU]) == {CPU: 0}
    assert not [e for e in read_calendar() if e.pipeline == dags.wide.name]  # every run cleared its entry


# -- a run planned into a busy pool -------------------------------------------------------
class Captured(Reporter):
    def __init__(self) -> None:
        self.run = None
        self.started: dict[str, float] = {}

    def on_planned(self, run) -> None:
        self.run = run

    def on_step(self, event) -> None:
        if event.kind == "started":
            self.started[event.record.step] = event.at


def test_a_run_planned_into_a_busy_pool_starts_where_its_plan_said_and_the_calendar_shows_it(pool, tmp_path):
    env = _env(tmp_path)
    first = _start_runs(tmp_path, [("hog_long", {})], env)
    deadline = time.monotonic() + 120
    while not any(
        r["state"] == "running" for e in read_calendar() if e.pipeline == dags.hog_long.name for r in e.reservations
    ):
        assert first[0].poll() is None, first[0].stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the first run never started its component"
        time.sleep(0.2)
    held_from = next(r["start"] for e in read_calendar() if e.pipeline == dags.hog_long.name for r in e.reservations)

    captured = Captured()
    remove = subscribe(captured)
    result: dict = {}
    second = threading.Thread(target=lambda: result.update(to_flow(dags.hog_short)(local_pool=POOL)))
    try:
        second.start()
        while captured.run is None:
            assert second.is_alive(), "the second run ended before it was planned"
            time.sleep(0.1)
        shown = CliRunner().invoke(app, ["calendar", POOL, "--png", str(tmp_path / "calendar.png")])
        second.join(timeout=120)
    finally:
        remove()
    _wait(first)
    assert result["steps"]["hold_short"]["state"] == "Completed"

    # The plan put the short run after the long one, and it started there.
    plan = captured.run.plan
    planned_start = plan.assignments["hold_short"].planned_start
    assert planned_start > 3.0, f"planned at {planned_start:.1f} s: the busy pool was not seen"
    assert plan.busy == 1
    expected = plan.planned_at + planned_start
    long = next(r for r in _intervals(tmp_path) if r[1] == "hold_long")
    timeline = (
        f"long run: slots taken {held_from:.2f}, sleeps {long[3]:.2f}-{long[4]:.2f}; short run: planned at "
        f"{plan.planned_at:.2f} to start {expected:.2f}, started {captured.started['hold_short']:.2f}"
    )
    print(timeline)
    # Never on the pool at once; and on time within the noise: Prefect's own start and finish
    # of a task run around the component (about 1 s before and 2 s after it here, on a
    # loaded 2-core machine) make the long run hold the pool that much longer than planned.
    assert captured.started["hold_short"] >= long[4], timeline
    assert abs(captured.started["hold_short"] - expected) < NOISE_SECONDS, timeline

    # `planflow calendar` showed the long run running and the short one waiting.
    assert shown.exit_code == 0, shown.output
    assert "hold_long" in shown.output and "running" in shown.output
    assert "hold_short" in shown.output and "planned" in shown.output
    assert "waiting runs (expected start -> finish):" in shown.output
    assert "runs under way (components done, expected finish):" in shown.output
    assert (tmp_path / "calendar.png").read_bytes()[:4] == b"\x89PNG"


# -- re-planning when a run ends early; a fifo run in the calendar -------------------------
def _entry_of(pipeline: str):
    return next((e for e in read_calendar(clean=False) if e.pipeline == pipeline), None)


def test_a_run_behind_one_that_ends_early_is_replanned_and_a_fifo_run_is_in_the_calendar(pool, tmp_path, monkeypatch):
    """A fifo run holds one core, declared 60 s: it writes its entry like a planned run. A
    run planned after it (one core beside it, declared 8 s, then the whole pool, planned
    behind the 60 s) sees it end early and re-plans while its first step still runs: its
    ETA in the calendar moves up, an `-eta` artifact says so, and its second step starts
    well before it was first planned. Steps end when the test releases them (files)."""
    release = tmp_path / "release"
    release.mkdir()
    monkeypatch.setenv("PLANFLOW_RELEASE_DIR", str(release))
    monkeypatch.setenv("PLANFLOW_INTERVALS", str(tmp_path / "intervals.tsv"))
    env = _env(tmp_path, PLANFLOW_RELEASE_DIR=str(release))
    first = _start_runs(tmp_path, [("hog_early", {"policy": "fifo"})], env)
    deadline = time.monotonic() + 120
    while (entry := _entry_of(dags.hog_early.name)) is None or entry.reservations[0]["state"] != "running":
        assert first[0].poll() is None, first[0].stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the fifo run never wrote its entry with its component running"
        time.sleep(0.1)
    held = entry.reservations[0]
    assert float(held["finish"]) - float(held["start"]) == pytest.approx(60.0, abs=0.5)  # its declared duration
    assert entry.eta > float(held["start"])  # the planned finish with the pool's ETA allowance (eta_history.py)
    shown = CliRunner().invoke(app, ["calendar", POOL])
    assert shown.exit_code == 0 and "hold_early" in shown.output and entry.flow_run_name in shown.output, shown.output

    captured = Captured()
    remove = subscribe(captured)
    result: dict = {}
    second = threading.Thread(target=lambda: result.update(to_flow(dags.prepared)(local_pool=POOL)))
    try:
        second.start()
        deadline = time.monotonic() + 120
        while "prepare" not in captured.started:
            assert second.is_alive(), "the second run ended before its first step started"
            assert time.monotonic() < deadline, "the second run's first step never started"
            time.sleep(0.1)
        first_eta = _entry_of(dags.prepared.name).eta
        (release / "hold_early").touch()  # the fifo run ends, 30 s and more before it said
        _wait(first)
        deadline = time.monotonic() + 60
        while (moved := _entry_of(dags.prepared.name).eta) > first_eta - 15.0:
            assert time.monotonic() < deadline, f"the ETA stayed at {moved - first_eta:+.1f} s from {first_eta:.1f}"
            time.sleep(0.2)
        (release / "prepare").touch()
        second.join(timeout=120)
    finally:
        (release / "hold_early").touch()
        (release / "prepare").touch()
        remove()
        second.join(timeout=120)
    assert result["steps"]["hold_after"]["state"] == "Completed"

    plan = captured.run.plan
    planned_after = plan.planned_at + plan.assignments["hold_after"].planned_start
    timeline = (
        f"second run planned at {plan.planned_at:.1f}: hold_after at {planned_after:.1f}, ETA {first_eta:.1f}, "
        f"moved to {moved:.1f}; hold_after started {captured.started['hold_after']:.1f}"
    )
    print(timeline)
    assert planned_after - plan.planned_at > 30.0, f"the fifo run's 60 s were not planned around: {timeline}"
    assert captured.started["hold_after"] < planned_after - 15.0, timeline
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(captured.run.flow_run_id)]),
                key=ArtifactFilterKey(any_=["shared-prepared-eta"]),
            )
        )
    assert found and "| moved | -" in str(found[0].data), [a.data for a in found]


# -- faults -------------------------------------------------------------------------------
def _entries_of(pipeline: str) -> list[CalendarEntry]:
    return [e for e in read_calendar() if e.pipeline == pipeline]


def test_a_killed_run_gives_its_slots_back_within_the_lease_and_its_entry_is_cleared(pool, tmp_path):
    env = _env(tmp_path)
    (proc,) = _start_runs(tmp_path, [("hog_long", {"long_seconds": 600.0})], env)
    deadline = time.monotonic() + 120
    # its slots taken and its entry saved (side by side: its component starts after both)
    while active_slots([CPU])[CPU] < 2000 or not (entries := _entries_of(dags.hog_long.name)):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the run never took its slots and saved its entry"
        time.sleep(0.2)
    (entry,) = entries
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed = time.monotonic()
    bound = LEASE_SECONDS + REPOSSESSOR_SECONDS + 30
    while active_slots([CPU])[CPU] > 0:
        assert time.monotonic() - killed < bound, f"slots still held {bound:.0f} s after the kill"
        time.sleep(1)
    returned = time.monotonic() - killed
    print(f"slots came back {returned:.1f} s after the kill (lease {LEASE_SECONDS:.0f} s)")

    # Its entry stays while the run looks alive; once Prefect calls it crashed, it is cleared.
    assert entry.flow_run_id in {e.flow_run_id for e in read_calendar()}
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(entry.flow_run_id), Crashed(message="killed by the test"), force=True)
    assert entry.flow_run_id not in {e.flow_run_id for e in read_calendar()}


def test_an_entry_of_a_run_that_does_not_exist_is_cleared(pool):
    ghost = str(uuid.uuid4())
    save_entry(
        CalendarEntry(
            flow_run_id=ghost,
            pipeline="ghost",
            planned_at=time.time(),
            eta=time.time() + 60,
            reservations=[{"component": "c", "pool": POOL, "start": time.time(), "finish": time.time() + 60}],
        )
    )
    assert ghost in {e.flow_run_id for e in read_calendar(clean=False)}
    assert ghost not in {e.flow_run_id for e in read_calendar()}
    assert ghost not in {e.flow_run_id for e in read_calendar(clean=False)}


def test_the_entry_of_a_run_that_died_silently_is_dropped_once_its_heartbeats_stop(pool, monkeypatch):
    """A run killed with SIGKILL stays Running in Prefect (only the crash automation of
    `planflow stack up` sets it Crashed), and its entry stayed in the calendar for good:
    other runs planned around its long-finished "running" component."""
    from datetime import UTC, datetime, timedelta

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event
    from prefect.states import Running

    from planflow.runtime.silent_runs import HEARTBEAT_EVENT, silent_after_seconds

    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    assert silent_after_seconds() == 90
    now = time.time()

    @flow(name="calendar-silent-probe")
    def probe() -> None: ...

    runs = {}
    with get_client(sync_client=True) as client:
        for name, beat_ago in (("dead", 200), ("alive", 5), ("no-heartbeats", None)):
            run = client.create_flow_run(probe, name=f"{name}-{uuid.uuid4().hex[:6]}")
            client.set_flow_run_state(run.id, Running(), force=True)
            runs[name] = str(run.id)
            if beat_ago is not None:
                emit_event(
                    HEARTBEAT_EVENT,
                    {"prefect.resource.id": f"prefect.flow-run.{run.id}"},
                    occurred=datetime.now(UTC) - timedelta(seconds=beat_ago),
                )
            save_entry(
                CalendarEntry(
                    flow_run_id=str(run.id),
                    pipeline="silent-probe",
                    planned_at=now - 1100,
                    eta=now - 1000,
                    reservations=[
                        {"component": "c", "pool": POOL, "start": now - 1100, "finish": now - 1000, "state": "running"}
                    ],
                )
            )
        from planflow.runtime.silent_runs import _last_heartbeat

        deadline = time.monotonic() + 30  # events reach the server's store within seconds
        while time.monotonic() < deadline:
            entries = {e.flow_run_id: e for e in read_calendar(clean=False)}
            if all(_last_heartbeat(client, entries[runs[n]]) for n in ("dead", "alive")):
                break
            time.sleep(0.5)
    kept = {e.flow_run_id for e in read_calendar()}
    assert runs["dead"] not in kept  # silent for 200 s > 90 s: its process is gone
    assert runs["alive"] in kept and runs["no-heartbeats"] in kept  # beating, or heartbeats off: kept
    with get_client(sync_client=True) as client:
        for run_id in runs.values():
            client.set_flow_run_state(uuid.UUID(run_id), Crashed(message="the test's probe"), force=True)
    assert not {e.flow_run_id for e in read_calendar()} & set(runs.values())
