"""Distributed mode for real: each component is a flow run of `run-component/<work pool>`,
picked up by a real worker (process, and Docker), its output passed through result storage."""

from __future__ import annotations

import json
import os
import subprocess
import time
from contextlib import contextmanager

import pytest

from planflow import to_flow
from planflow.core import discovery as registry
from planflow.runtime.runner import PipelineRunError

from tests.deployments.blas_dag import blas_one
from tests.deployments.conftest import PREFECT, PREFECT_FILE, ROOT, run_cli

pytestmark = pytest.mark.usefixtures("registered_blocks")

SMALL_PM = {"n_machines": 24, "n_folds": 3, "max_iter": 30, "n_trees": 50}


@pytest.fixture(scope="module")
def component_deployments(work_pools):
    for name in ("run-component/local-process", "run-component/docker"):
        out = run_cli([PREFECT, "--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE), "--name", name])
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@contextmanager
def worker(pool: str, kind: str):
    """A real `prefect worker start`, polling every second, until the block ends."""
    from planflow.prefect.workpools import worker_online

    # a heartbeat every 10 s: a worker counts as live for 3 beats (workpools.worker_status), and
    # on a loaded CI machine a beat every 5 s once came 18 s late, the pool left out of a plan
    env = dict(os.environ, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_HEARTBEAT_SECONDS="10")
    process = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", pool, "--type", kind],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not worker_online(pool):
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.monotonic() < deadline, f"worker for {pool} never came online"
            time.sleep(0.5)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _children(pipeline: str, steps: list[str]):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"{pipeline}.{s}" for s in steps]))
        )


def test_every_component_runs_as_a_linked_flow_run_on_the_process_pool(component_deployments):
    pipeline = registry.get("image-classification")
    started = time.time()
    with worker("local-process", "process"):
        result = to_flow(pipeline)(**{"augment": 0, "test_size": 0.5}, mode="distributed")
    assert result["mode"] == "distributed"
    assert {s["state"] for s in result["steps"].values()} == {"Completed"}
    assert {s["pool"] for s in result["steps"].values()} == {"local"}  # the only pool with a worker
    assert result["steps"]["predictions"]["metrics"]["accuracy"] > 0.95  # read back from storage
    children = [
        c for c in _children("image-classification", list(result["steps"])) if c.created.timestamp() >= started - 1
    ]
    assert len(children) == 4 and all(c.state.is_completed() for c in children)
    assert all(c.parent_task_run_id is not None for c in children)  # shown under the parent in the UI


def test_a_failed_child_fails_the_parent_with_the_childs_error(component_deployments):
    with worker("local-process", "process"):
        with pytest.raises(PipelineRunError) as caught:
            to_flow(registry.get("demo-failure"))(mode="distributed")
    message = str(caught.value)
    assert "step 'broken_step' of pipeline 'demo-failure' failed: ChildRunError" in message
    assert "injected failure: this step always fails" in message


def test_a_pool_without_worker_or_deployment_is_named_with_what_to_run(component_deployments):
    """A work pool of its own (no other module deploys to it or serves it)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from planflow.runtime.distributed import DeploymentMissingError, check_ready, readiness

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="readiness-check", type="process"), overwrite=True)
    try:
        ready, problems = readiness({"readiness-check"})
        assert ready == {}
        assert problems["readiness-check"][0].startswith(
            "no deployment 'run-component/readiness-check'. Fix: add to your prefect.yaml a deployment named "
            "'readiness-check' with entrypoint planflow.runtime.component_flow:run_component and "
            "work_pool {name: readiness-check}, then `prefect --no-prompt deploy --all`"
        )
        assert "Start one with: planflow worker start readiness-check" in problems["readiness-check"][1]
        with pytest.raises(DeploymentMissingError, match="distributed mode cannot start"):
            check_ready({"readiness-check"})
    finally:
        with get_client(sync_client=True) as client:
            client.delete_work_pool("readiness-check")


def test_a_child_nobody_picks_up_is_cancelled_with_what_to_run(component_deployments, monkeypatch):
    """The worker is gone after the readiness check: the run fails instead of waiting forever."""
    from planflow.runtime.distributed import ChildRunError, _child

    monkeypatch.setenv("PLANFLOW_PICKUP_TIMEOUT_SECONDS", "3")
    parameters = {
        "pipeline": "flows.image_classification.flow:pipeline",
        "step": "digits",
        "params": {},
        "inputs": {},
        "run_key": "orphan",
    }
    with pytest.raises(ChildRunError) as caught:
        _child("run-component/local-process", parameters, {}, "orphan.digits", "local-process")
    assert "no worker picked up flow run 'orphan.digits' of run-component/local-process within 3 s" in str(caught.value)
    assert "Fix: planflow worker start local-process" in str(caught.value)


def test_predictive_maintenance_across_the_process_and_docker_pools(component_deployments, docker_image):
    from planflow.prefect.blocks import ResourcePool

    try:
        previous = ResourcePool.load("docker")
    except ValueError:
        previous = None
    ResourcePool(work_pool="docker", cpu=2, mem_gib=4).save("docker", overwrite=True)
    started = time.time()
    containers: list[str] = []
    try:
        with worker("local-process", "process"), worker("docker", "docker"):
            result = to_flow(registry.get("predictive-maintenance-two-pools"))(**SMALL_PM, mode="distributed")
        steps = result["steps"]
        assert {s["state"] for s in steps.values()} == {"Completed"}
        assert steps["anomaly_model"]["pool"] == "docker" and steps["rul_model"]["pool"] == "local"
        assert steps["anomaly_model"]["metrics"]["f1"] > 0.5
        assert steps["maintenance_plan"]["metrics"]["max_jobs_per_shift"] <= 3  # the join read both branches
        (child,) = [
            c
            for c in _children("predictive-maintenance-two-pools", ["anomaly_model"])
            if c.created.timestamp() >= started - 1
        ]
        found = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=io.prefect.flow-run-id={child.id}"],
            capture_output=True,
            text=True,
        )
        containers = found.stdout.split()
        assert containers, "the component's container is gone (auto_remove should be off)"
        host = json.loads(
            subprocess.run(["docker", "inspect", containers[0]], capture_output=True, text=True, check=True).stdout
        )[0]["HostConfig"]
        # anomaly_model is declared cpu=1, mem_gib=0.5: the plan's figures, in the container
        assert host["NanoCpus"] == 1_000_000_000
        assert host["Memory"] == 512 * 2**20 == host["MemorySwap"]
    finally:  # other modules plan over every pool that exists: leave the one that was there
        if previous is None:
            ResourcePool.delete("docker")
        else:
            previous.save("docker", overwrite=True)
        for container in containers:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)


def test_a_cpu1_component_in_a_child_flow_run_runs_blas_with_one_thread(component_deployments, monkeypatch):
    """As in-process (runtime/cpulimits.py): the child flow run holds the step's native
    thread pools to its declared cpu. The worker's environment starts BLAS with two
    threads, so that an unlimited step would see two whatever the machine has."""
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    with worker("local-process", "process"):
        result = to_flow(blas_one)(mode="distributed")
    step = result["steps"]["blas_threads"]
    assert step["state"] == "Completed" and step["pool"] == "local"
    assert step["metrics"]["blas_threads"] == 1
