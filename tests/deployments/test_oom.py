"""A component killed for memory, for real: the Docker pool, a real Docker worker, the
kernel's OOM killer. It runs again with a larger mem_limit (read back with `docker
inspect`) and completes; the next plan uses the memory it learned; a component that
needs more than any pool has fails at the cap with the figures."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from planflow.prefect.blocks import ResourcePool
from planflow.remediation.oom_demo import oom_demo, pipeline
from planflow.runtime.planning import make_plan
from planflow.runtime.runner import PipelineRunError

from tests.deployments.test_distributed import (  # noqa: F401 (a fixture)
    _children,
    component_deployments,
    worker,
)

pytestmark = pytest.mark.usefixtures("registered_blocks")
MIB = 2**20
# `hungry` declares 256 MiB; planflow's flow-run processes in the container hold about
# 190 MiB before it allocates, so with 200 MiB more it needs ~1.5x its declaration
# (measured: a 0.384 GiB cgroup peak), under the 512 MiB of its run again.
EXTRA_MIB = 200


@pytest.fixture(scope="module")
def docker_worker(component_deployments, docker_image):  # noqa: F811
    """One Docker worker for the module (a worker stopped just before would still look
    online to the next test for a heartbeat)."""
    with worker("docker", "docker") as process:
        yield process


@pytest.fixture
def docker_pool(docker_worker):
    """The ResourcePool `docker` at 1 GiB (the cap of these tests), put back after."""
    try:
        previous = ResourcePool.load("docker")
    except ValueError:
        previous = None
    ResourcePool(work_pool="docker", cpu=2, mem_gib=1).save("docker", overwrite=True)
    yield
    if previous is None:
        ResourcePool.delete("docker")
    else:
        previous.save("docker", overwrite=True)
    label = f"label=io.prefect.flow-run-name={pipeline.name}.hungry"
    left = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True).stdout.split()
    if left:
        subprocess.run(["docker", "rm", "-f", *left], capture_output=True)


def _containers(started: float) -> list[dict]:
    """`docker inspect` of the hungry step's containers since `started`, oldest first."""
    runs = sorted(
        (c for c in _children(pipeline.name, ["hungry"]) if c.created.timestamp() >= started - 1),
        key=lambda c: c.created,
    )
    found = []
    for run in runs:
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=io.prefect.flow-run-id={run.id}"],
            capture_output=True,
            text=True,
        ).stdout.split()
        if ids:
            found += json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True).stdout)
    return found


def test_killed_for_memory_runs_again_with_more_and_the_next_plan_learns(
    docker_pool,
):
    started = time.time()
    result = oom_demo(extra_mib=EXTRA_MIB, mode="distributed")
    containers = _containers(started)
    step = result["steps"]["hungry"]
    assert step["state"] == "Completed" and step["pool"] == "docker"
    assert step["oom_kills"] == 1 and step["mem_limit_gib"] == 0.5
    killed, completed = containers
    assert killed["State"]["OOMKilled"]  # its flow process was killed (the container may exit 0 or 137)
    assert killed["HostConfig"]["Memory"] == 256 * MIB  # the declaration
    assert not completed["State"]["OOMKilled"] and completed["State"]["ExitCode"] == 0
    assert completed["HostConfig"]["Memory"] == 512 * MIB == completed["HostConfig"]["MemorySwap"]
    peak = step["peak_mem_gib"]  # the container's own cgroup peak: above its declaration, below the limit
    assert max(0.25, EXTRA_MIB / 1024) < peak <= 0.5, peak
    assert step["mem_gib_declared"] == 0.25

    planned = make_plan(pipeline, pools=({"docker": ResourcePool.load("docker")}, {"docker"}))
    figure = planned.memory["hungry"]
    assert figure.source.startswith("learned n=1") and figure.gib == pytest.approx(max(peak * 1.2, peak), rel=1e-3)
    assert planned.assignments["hungry"].demand["mem_gib"] == figure.gib  # the job variables' mem_limit


def test_needing_more_than_any_pool_fails_at_the_cap_with_the_figures(
    docker_pool,
):
    """The largest pool that may run it is its declaration: no run again, one container."""
    ResourcePool(work_pool="docker", cpu=2, mem_gib=0.25).save("docker", overwrite=True)
    started = time.time()
    with pytest.raises(PipelineRunError) as caught:
        oom_demo(extra_mib=EXTRA_MIB, mode="distributed")
    containers = _containers(started)
    message = str(caught.value)
    assert "OomCapError: component 'hungry' was killed for memory (docker container" in message
    assert "at its limit of 0.25 GiB; peak seen: at least 0.25 GiB (its limit)" in message
    assert "the largest pool that may run it, 'docker', has 0.25 GiB" in message and "Fix:" in message
    (container,) = containers  # no run again beyond the cap
    assert container["State"]["OOMKilled"] and container["HostConfig"]["Memory"] == 256 * MIB
