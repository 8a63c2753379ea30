"""`planflow worker start POOL`: the pool's type read from the pool, bad requests
refused with the fix, and a worker started from a subfolder that runs from the project
folder and picks up a run of the project's own deployment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from planflow.ops.processes import stop_process, wait_until
from planflow.prefect.blocks import ResourcePool

from tests.e2e.userproject import DEPLOYMENT, PIPELINE, clean_env, final_flow_run, tail, write_project

BIN = Path(sys.executable).parent


@pytest.fixture
def process_pool(prefect_server) -> str:
    name = f"test-worker-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))
    yield name
    with get_client(sync_client=True) as client:
        client.delete_work_pool(name)


@pytest.fixture
def env(tmp_path, prefect_server) -> dict[str, str]:
    """A user's environment that chose the session's server with PREFECT_API_URL."""
    return clean_env(BIN, tmp_path / "home", PREFECT_API_URL=prefect_server.url)


def planflow(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "planflow"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_a_pool_that_does_not_exist_is_named_with_the_fix(tmp_path, env, prefect_server):
    done = planflow("worker", "start", "no-such-pool", cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert f"work pool 'no-such-pool' does not exist on {prefect_server.url}. Fix: `planflow workpools apply`" in (
        done.stderr.replace("\n", " ")
    )


def test_a_type_other_than_the_pools_is_refused(tmp_path, env, process_pool):
    done = planflow("worker", "start", process_pool, "--type", "docker", cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert f"work pool '{process_pool}' is of type 'process', not 'docker'" in done.stderr.replace("\n", " ")


def test_a_worker_started_in_a_subfolder_runs_from_the_project_and_picks_up_a_run(
    tmp_path, env, process_pool, prefect_server, request
):
    project = write_project(tmp_path / "project", pool=process_pool)
    deploy = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    started = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", f"{PIPELINE}/{DEPLOYMENT}", "-p", "rows=7"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)

    own_pool = f"wp-{uuid.uuid4().hex[:8]}"
    ResourcePool(work_pool=process_pool, cpu=2, mem_gib=4).save(own_pool)
    request.addfinalizer(lambda: ResourcePool.delete(own_pool))  # other tests plan over every pool
    log = tmp_path / "worker.log"
    # a shell that also starts the server (this one's takes no auth: the setting is inert here)
    server_shell = {**env, "PREFECT_SERVER_API_AUTH_STRING": "admin:server-secret"}
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [str(BIN / "planflow"), "worker", "start", process_pool, "--limit", "1"],
            cwd=project / "flows" / "wordcount",
            env=server_shell,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        run = final_flow_run(prefect_server.url, run_id, 300, lambda: tail(log))
        # planned on the ResourcePool of the work pool it ran on, not on `local` (a deployment on
        # another work pool took `local`'s slots, and its own pool's capacity went unused). Its
        # log reaches the server in batches, the last at the run process's exit: read until it
        # has (the worker, stopped below, would end that process with it).
        said = f"Pool '{own_pool}': the ResourcePool of work pool '{process_pool}', which this run is on"
        lines: list[str] = []

        def logged() -> bool:
            with get_client(sync_client=True) as client:
                found = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            lines[:] = [entry.message for entry in found]
            return any(said in line for line in lines)

        wait_until(logged, 60, 0.5)
        process = psutil.Process(worker.pid)  # exec'd: the same pid is now `prefect worker start`
        assert Path(process.cwd()) == project
        assert process.environ()["PYTHONPATH"].split(os.pathsep)[0] == str(project)
        assert "worker" in process.cmdline() and "--type" in process.cmdline() and "process" in process.cmdline()
        # the server's secret is not the worker's: Prefect copies a worker's settings into
        # each flow run's job (a container's environment, shown by `docker inspect`)
        assert process.environ().get("PREFECT_SERVER_API_AUTH_STRING", "") == ""  # empty: also over a profile's
    finally:
        stop_process(worker, timeout=30)  # its process group: the worker and its flow runs
    assert run["state_type"] == "COMPLETED", tail(log)
    assert run["parameters"] == {"rows": 7}
    assert {"planflow", f"pipeline:{PIPELINE}"} <= set(run["tags"])
    assert any(said in line for line in lines), lines[:20]
