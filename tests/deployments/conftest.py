"""Fixtures for the work pool, deployment and image tests.

Docker: when the engine is missing the Docker tests skip with the command that
installs it, except under CI=true, where they fail (CI must exercise them).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import FlowRunWaitTimeout
from prefect.flow_runs import wait_for_flow_run

ROOT = Path(__file__).resolve().parents[2]
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"
IN_CI = os.environ.get("CI", "").lower() == "true"
IMAGE = os.environ.get("PLANFLOW_TEST_IMAGE", "planflow:dev")
PREFECT = str(Path(sys.executable).with_name("prefect"))


def docker_problem() -> str | None:
    """Why Docker cannot be used here, or None."""
    if not shutil.which("docker"):
        return "the docker client is not installed"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"the Docker engine does not answer ({probe.stderr.strip()[:200]})"
    return None


def skip_or_fail(reason: str) -> None:
    message = f"{reason}. Fix: sudo scripts/install-docker.sh && scripts/build-image.sh (make image)"
    if IN_CI:
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


def run_cli(args: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=timeout, **kwargs
    )


@pytest.fixture(scope="session")
def deployed(work_pools) -> subprocess.CompletedProcess:
    """`prefect --no-prompt deploy --prefect-file deployments/prefect.yaml --all`, once."""
    result = run_cli([PREFECT, "--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE), "--all"])
    assert result.returncode == 0, f"prefect deploy failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def wait_for_final_state(flow_run_id: UUID | str, timeout: float = 240.0) -> FlowRun:
    """The flow run once its state is final (Prefect's own event-driven wait); on timeout
    the test fails naming the run, its last state and the timeout."""
    run_id = UUID(str(flow_run_id))
    try:
        return asyncio.run(wait_for_flow_run(run_id, timeout=timeout))
    except FlowRunWaitTimeout:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
        state = run.state
        last = f"{state.type.value} ({state.name}: {state.message or 'no message'})" if state else "no state"
        pytest.fail(
            f"flow run {run.name!r} ({run_id}) of deployment {run.deployment_id} did not reach a final state "
            f"within {timeout:g} s; its last state: {last}"
        )
