"""Fixtures for the work pool, deployment and image tests.

Docker: when the engine is missing the Docker tests skip with the command that
installs it, except under CI=true, where they fail (CI must exercise them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


def wait_for_final_state(flow_run_id, timeout: float = 240.0):
    import time

    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                return run
            time.sleep(1)
