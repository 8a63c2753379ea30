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
from planflow.prefect.limits import sync_limits
from planflow.remediation import oom
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
    _set_pool(1.0)
    yield
    if previous is None:
        ResourcePool.delete("docker")
    else:
        previous.save("docker", overwrite=True)
        sync_limits({"docker": previous.capacity()})
    label = f"label=io.prefect.flow-run-name={pipeline.name}.hungry"
    left = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True).stdout.split()
    if left:
        subprocess.run(["docker", "rm", "-f", *left], capture_output=True)


def _set_pool(mem_gib: float) -> None:
    """The ResourcePool `docker` and its shared-slot limits (which must agree)."""
    pool = ResourcePool(work_pool="docker", cpu=2, mem_gib=mem_gib)
    pool.save("docker", overwrite=True)
    sync_limits({"docker": pool.capacity()})


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


def test_killed_for_memory_runs_again_with_more_and_the_next_plan_learns(docker_pool, tmp_path):
    """`planflow demo heal --scenario oom`'s own function: the whole story, read back."""
    said: list[str] = []
    seen = oom.oom_scenario(tmp_path, say=said.append, timeout=240)
    step = seen["step"]
    assert step["state"] == "Completed" and step["pool"] == "docker"
    assert step["oom_kills"] == 1 and step["mem_limit_gib"] == 0.5
    killed, completed = seen["containers"]  # from `docker inspect`, oldest first
    assert "mem_limit 256 MiB" in killed and killed.endswith("killed for memory (State.OOMKilled)")
    assert completed.endswith("mem_limit 512 MiB, exit 0, completed")
    peak = step["peak_mem_gib"]  # the container's own cgroup peak: above its declaration, below the limit
    assert max(0.25, oom.EXTRA_MIB / 1024) < peak <= 0.5, peak
    assert step["declared_mem_gib"] == 0.25
    assert seen["plan_before"] == "plan before: hungry planned with 0.25 GiB (declared)"
    assert seen["plan_after"].startswith("plan after: hungry planned with ") and "(learned n=1" in seen["plan_after"]

    planned = make_plan(pipeline, pools=({"docker": ResourcePool.load("docker")}, {"docker"}))
    figure = planned.memory["hungry"]
    assert figure.source.startswith("learned n=1") and figure.gib == pytest.approx(peak * 1.2, rel=5e-3)
    assert planned.assignments["hungry"].demand["mem_gib"] == figure.gib  # the job variables' mem_limit
    assert any("OOM" in line or "killed for memory" in line for line in said)


def test_needing_more_than_any_pool_fails_at_the_cap_with_the_figures(docker_pool):
    """The largest pool that may run it has 0.5 GiB and it needs about 0.9: killed at
    0.5 GiB (after 0.25), then it fails naming the figures; no run again beyond the cap.
    It starts from the declaration: a peak learned by the test before can exceed 0.5 GiB
    (0.55 on one machine), and the plan then refuses the pool before any run."""
    oom.forget_history()
    _set_pool(0.5)
    started = time.time()
    with pytest.raises(PipelineRunError) as caught:
        oom_demo(extra_mib=700, mode="distributed")
    containers = _containers(started)
    message = str(caught.value)
    assert "OomCapError: component 'hungry' was killed for memory (docker container" in message
    assert "at its limit of 0.5 GiB; peak seen: at least 0.5 GiB (its limit)" in message
    assert "the largest pool that may run it, 'docker', has 0.5 GiB" in message and "Fix:" in message
    assert 1 <= len(containers) <= 2 and all(c["State"]["OOMKilled"] for c in containers)
    assert containers[-1]["HostConfig"]["Memory"] == 512 * MIB
