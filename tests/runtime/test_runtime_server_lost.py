"""Runs whose Prefect server is killed in the middle: each fails within
PLANFLOW_SERVER_LOST_SECONDS naming the cause, and is Crashed once the server is back.
Two runs at once: `planflow run` in its component, and a run held between its Running
state and its body (where Prefect's engine reads the run again: before the watchdog
started with the Running state, a server lost there kept the run on its client's
retries for a minute). The server is stopped with `planflow server down`'s function: the
runs' detached processes write them down and end, and `server up` marks them Crashed. A
Prefect server of its own (the session's stays up)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings

from planflow.ops import server as stack
from planflow.runtime.watchdog import EXIT_SERVER_LOST, PENDING_DIR
from planflow.settings import StatePaths

from tests.conftest import TESTS
from tests.monitoring.helpers import free_port, wait_for

PLANFLOW = str(Path(sys.executable).with_name("planflow"))
BOUND = 10  # PLANFLOW_SERVER_LOST_SECONDS for the test (30 by default)
HELD = "toy-slow-held"
# toy-slow's flow, held by a hook of its own after planflow's Running hooks until a file
# exists (at most 300 s): the server is killed while the engine has not reached the body
HELD_RUN = f"""
import os, time
from slow_dag import slow
from planflow.runtime.flow import to_flow

def hold(flow, flow_run, state):
    deadline = time.monotonic() + 300
    while not os.path.exists(os.environ["HOLD_UNTIL"]) and time.monotonic() < deadline:
        time.sleep(0.1)

flow = to_flow(slow, name={HELD!r})
flow.on_running(hold)
flow()
"""


def _runs(api: str) -> list:
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["toy-slow", HELD])))


def _in_component(api: str, flow_run_id) -> bool:
    """Has the run's component (its one task run) started?"""
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return any(t.state and t.state.is_running() for t in tasks)


def _running_by_flow(api: str) -> dict[str, object]:
    """The Running flow runs by flow name (one per name here)."""
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        named = FlowFilter(name=FlowFilterName(any_=["toy-slow", HELD]))
        flows = {f.id: f.name for f in client.read_flows(flow_filter=named)}
    return {flows.get(r.flow_id, "?"): r for r in _runs(api) if r.state and r.state.is_running()}


def _waiting(flow_run_ids) -> list[int]:
    """The pids of detached processes still waiting to mark one of these runs Crashed."""
    wanted = {str(i) for i in flow_run_ids}
    found = []
    for process in psutil.process_iter(["cmdline"]):
        line = process.info["cmdline"] or []
        if "planflow.runtime.watchdog" in line and wanted & set(line):
            found.append(process.pid)
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_runs_whose_server_is_killed_fail_within_the_bound_and_are_crashed_after(prefect_server, tmp_path):
    paths = StatePaths(tmp_path / "home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    stack.up(paths, port=port)
    release = tmp_path / "release"
    env = {
        **os.environ,
        "PLANFLOW_HOME": str(paths.home),
        "PREFECT_API_URL": api,
        "PLANFLOW_PIPELINES": "slow_dag:slow",
        "PYTHONPATH": os.pathsep.join([str(TESTS / "fixtures"), os.environ.get("PYTHONPATH", "")]),
        "PLANFLOW_SERVER_LOST_SECONDS": str(BOUND),
        "HOLD_UNTIL": str(release),
    }
    env.pop("PLANFLOW_PUSHGATEWAY_URL", None)
    logs = {name: (tmp_path / f"{name}.err").open("w") for name in ("toy-slow", HELD)}
    runs = {
        "toy-slow": subprocess.Popen(
            [PLANFLOW, "run", "toy-slow", "--json"], env=env, stdout=subprocess.DEVNULL, stderr=logs["toy-slow"]
        ),
        HELD: subprocess.Popen([sys.executable, "-c", HELD_RUN], env=env, stdout=subprocess.DEVNULL, stderr=logs[HELD]),
    }
    try:
        running = wait_for(
            lambda: (
                (found := _running_by_flow(api)).keys() >= runs.keys()
                and _in_component(api, found["toy-slow"].id)
                and found
            ),
            120,
            "both runs to be Running, toy-slow in its component",
            interval=0.5,
        )
        stack.down(paths)
        killed = time.monotonic()
        release.touch()  # the held run goes on, to the engine's read of the run
        for name, run in runs.items():
            try:
                code = run.wait(timeout=max(1.0, BOUND + 60 - (time.monotonic() - killed)))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{name} still hangs {BOUND + 60} s after its server was killed") from None
            took = time.monotonic() - killed
            stderr = (tmp_path / f"{name}.err").read_text()
            assert code == EXIT_SERVER_LOST, (name, code, stderr[-2000:])
            assert f"Prefect server at {api} unreachable for {BOUND} s" in stderr, (name, stderr[-2000:])
            assert took < BOUND + 30, (name, took)  # Prefect's own retries took minutes
            print(f"{name} exited {took:.1f} s after its server was killed (bound {BOUND} s)")

        # the server was stopped with `server down`: each run's detached process writes the
        # run down and ends (it waited an hour for the server, a process per run)
        ids = {run.id for run in running.values()}
        pending = paths.home / PENDING_DIR
        wait_for(
            lambda: {f.stem for f in pending.glob("*.json")} == {str(i) for i in ids} and not _waiting(ids),
            30,
            "each run's detached process to write the run down and end",
            interval=0.5,
        )
        assert mode(pending) == 0o700 and all(mode(f) == 0o600 for f in pending.iterdir())

        back_up = stack.up(paths, port=port)
        back = time.monotonic()
        assert all(f"flow run {i} marked Crashed" in back_up.detail for i in ids), back_up.detail
        assert not list(pending.glob("*.json"))
        crashed = wait_for(
            lambda: len(done := [r for r in _runs(api) if r.id in ids and r.state.is_crashed()]) == 2 and done,
            60,
            "both runs to be marked Crashed",
            interval=0.5,
        )
        for run in crashed:
            assert "unreachable" in (run.state.message or ""), run.state
        print(f"both marked Crashed {time.monotonic() - back:.1f} s after the server was back")
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
        for log in logs.values():
            log.close()
        stack.down(paths)
