"""Docker for real: the planflow image, the docker pool, a real Docker worker, a flow run
that completes in a container whose memory limit and CPU quota are the plan's."""

from __future__ import annotations

import json
import subprocess

import pytest

from planflow.prefect.jobvars import job_variables
from planflow.prefect.workpools import WorkPoolError, require_image
from planflow.settings import StatePaths

from tests.deployments.conftest import (
    PREFECT,
    PREFECT_FILE,
    docker_problem,
    run_cli,
    skip_or_fail,
    wait_for_final_state,
)


def test_missing_image_says_how_to_build_it():
    problem = docker_problem()
    if problem:
        skip_or_fail(problem)
    with pytest.raises(WorkPoolError) as info:
        require_image("planflow:no-such-tag")
    assert "the image 'planflow:no-such-tag' is not on this machine" in str(info.value)
    assert "Fix: build it from your project's Dockerfile (in planflow's repository: `make image`)" in str(info.value)


def test_image_runs_the_project(docker_image):
    require_image(docker_image)
    probe = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            docker_image,
            "python",
            "-c",
            "import prefect, flows.image_classification.flow as f, os; "
            "print(prefect.__version__, f.image_classification.name, os.getcwd(), os.environ['PREFECT_HOME'])",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["3.8.8", "image-classification", "/opt/planflow", "/var/lib/planflow/prefect"]


def test_flow_run_in_a_container_with_the_planned_limits(docker_image, work_pools):
    """Deploy image-classification on the docker pool, run it with the job variables of
    a component planned at cpu=1, mem_gib=1, through a real `prefect worker start --type
    docker`, and read the container's limits back from `docker inspect`."""
    from prefect.deployments import run_deployment

    deploy = run_cli(
        [PREFECT, "--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE), "--name", "image-classification-docker"]
    )
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

    results = StatePaths.discover().results
    results.mkdir(parents=True, exist_ok=True)
    results_before = set(results.iterdir())
    job_vars = job_variables("docker", cpu=1, gpu=0, mem_gib=1, image=docker_image)
    job_vars.update(
        auto_remove=False,  # keep the container for `docker inspect`
        volumes=[f"{results}:{results}"],
        env={"PREFECT_LOCAL_STORAGE_PATH": str(results)},
    )
    flow_run = run_deployment(
        "image-classification/image-classification-docker",
        parameters={"augment": 0, "test_size": 0.5},
        job_variables=job_vars,
        timeout=0,
    )
    container = None
    try:
        worker = run_cli(
            [PREFECT, "worker", "start", "--pool", "docker", "--type", "docker", "--run-once"], timeout=300
        )
        run = wait_for_final_state(flow_run.id, timeout=60)
        found = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=io.prefect.flow-run-id={flow_run.id}"],
            capture_output=True,
            text=True,
        )
        container = found.stdout.strip() or None
        assert run.state.is_completed(), (
            f"flow run ended {run.state.type}: {run.state.message}\n"
            f"worker output:\n{worker.stdout[-4000:]}\n{worker.stderr[-4000:]}"
        )
        assert container, "the flow run's container was not kept (auto_remove=false)"
        inspect = json.loads(
            subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True).stdout
        )[0]
        host = inspect["HostConfig"]
        assert host["Memory"] == 1024 * 2**20 == 1 * 2**30  # mem_limit 1024m
        assert host["MemorySwap"] == host["Memory"]  # no swap beyond the plan
        assert host["NanoCpus"] == 1_000_000_000  # cpu=1
        assert host["NetworkMode"] == "host"  # reaches 127.0.0.1's API
        assert f"{results}:{results}" in host["Binds"]
        assert inspect["Config"]["Image"] == docker_image
        env = dict(item.split("=", 1) for item in inspect["Config"]["Env"])
        assert env["PREFECT_LOCAL_STORAGE_PATH"] == str(results)
        # The run's persisted results landed in the shared folder on the host.
        assert set(results.iterdir()) - results_before, f"the run wrote no result into {results}"
    finally:
        if container:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)
