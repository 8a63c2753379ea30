"""`planflow run` whose Prefect server is killed in the middle: the command fails within
PLANFLOW_SERVER_LOST_SECONDS naming the cause, and the run is Crashed once the server is
back. A Prefect server of its own (the session's stays up)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.settings import PREFECT_API_URL, temporary_settings

from planflow.ops import server as stack
from planflow.runtime.watchdog import EXIT_SERVER_LOST
from planflow.settings import StatePaths

from tests.conftest import TESTS
from tests.monitoring.helpers import free_port, wait_for

PLANFLOW = str(Path(sys.executable).with_name("planflow"))
BOUND = 10  # PLANFLOW_SERVER_LOST_SECONDS for the test (30 by default)


def _runs(api: str) -> list:
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["toy-slow"])))


def test_a_run_whose_server_is_killed_fails_within_the_bound_and_is_crashed_after(prefect_server, tmp_path):
    paths = StatePaths(Path(tempfile.mkdtemp(prefix="planflow-lost-run-")))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    stack.up(paths, port=port)
    env = {
        **os.environ,
        "PLANFLOW_HOME": str(paths.home),
        "PREFECT_API_URL": api,
        "PLANFLOW_PIPELINES": "slow_dag:slow",
        "PYTHONPATH": os.pathsep.join([str(TESTS / "fixtures"), os.environ.get("PYTHONPATH", "")]),
        "PLANFLOW_SERVER_LOST_SECONDS": str(BOUND),
    }
    env.pop("PLANFLOW_PUSHGATEWAY_URL", None)
    log = (tmp_path / "run.err").open("w")
    run = subprocess.Popen(
        [PLANFLOW, "run", "toy-slow", "--json"], env=env, stdout=subprocess.PIPE, stderr=log, text=True
    )
    try:
        [flow_run] = wait_for(
            lambda: [r for r in _runs(api) if r.state and r.state.is_running()],
            120,
            "the run to be Running",
            interval=0.5,
        )
        stack.down(paths)
        killed = time.monotonic()
        try:
            code = run.wait(timeout=BOUND + 60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"`planflow run` still hangs {BOUND + 60} s after its server was killed") from None
        took = time.monotonic() - killed
        stderr = (tmp_path / "run.err").read_text()
        assert code == EXIT_SERVER_LOST, (code, stderr[-2000:])
        assert f"Prefect server at {api} unreachable for {BOUND} s" in stderr, stderr[-2000:]
        assert took < BOUND + 30, took  # Prefect's own retries took minutes
        print(f"`planflow run` exited {took:.1f} s after its server was killed (bound {BOUND} s)")

        stack.up(paths, port=port)
        back = time.monotonic()
        crashed = wait_for(
            lambda: next((r for r in _runs(api) if r.id == flow_run.id and r.state.is_crashed()), None),
            60,
            "the run to be marked Crashed",
            interval=0.5,
        )
        assert "unreachable" in (crashed.state.message or ""), crashed.state
        print(f"marked Crashed {time.monotonic() - back:.1f} s after the server was back")
    finally:
        if run.poll() is None:
            run.kill()
        log.close()
        stack.down(paths)
