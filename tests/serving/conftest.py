"""One small training run of fraud-risk for the serving tests, and the service itself
(`planflow serve fraud-risk --replicas 2`: two replicas behind HAProxy)."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from planflow.core import discovery
from planflow.ops.processes import free_block, log_tail, spawn, stop_process, wait_until
from planflow.serving.loader import LoadedRun, read_latest_run
from planflow.serving.probes import ready

from tests.conftest import IN_CI

ROOT = Path(__file__).parents[2]
SMALL = {"n_customers": 200, "n_merchants": 120, "n_days": 30, "max_iter": 60}


def fraud_flow():
    discovery.use_project_imports(ROOT)
    from flows.fraud_risk.flow import fraud_risk  # noqa: PLC0415  (the project's module, on sys.path now)

    return fraud_risk


def train(**overrides) -> str:
    """One run of fraud-risk; its flow run id."""
    state = fraud_flow()(**{**SMALL, **overrides}, return_state=True)
    assert state.is_completed(), state
    return str(state.state_details.flow_run_id)


def read_run(steps: list[str]) -> LoadedRun:
    async def read() -> LoadedRun:
        async with get_client() as client:
            return await read_latest_run(client, "fraud-risk", steps)

    return asyncio.run(read())


@pytest.fixture(scope="session")
def fraud_run(registered_blocks) -> LoadedRun:
    """The shared training run, with the batch outputs the tests compare against."""
    train()
    return read_run(["features", "scores", "decisions"])


def need_haproxy() -> None:
    if not (shutil.which("haproxy") or os.access("/usr/sbin/haproxy", os.X_OK)):
        message = "haproxy is not installed (make services)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def service(fraud_run, tmp_path_factory):
    """`planflow serve fraud-risk --replicas 2`, ready (a model loaded) behind HAProxy:
    its URL, its first port, and its log."""
    need_haproxy()
    port = free_block(3)
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [sys.executable, "-m", "planflow.cli", "serve", "fraud-risk", "--replicas", "2"]
    command += ["--port", str(port), "--poll-seconds", "0.5"]
    process = spawn(command, log, os.environ, ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        # ready through HAProxy, and announced (its line comes a moment after HAProxy answers)
        came_up = wait_until(lambda: (ready(url) and "logs in" in log_tail(log, 20)) or process.poll() is not None, 90)
        if not came_up or process.poll() is not None:
            pytest.fail(f"planflow serve did not become ready within 90 s:\n{log_tail(log, 40)}")
        yield url, port, log
    finally:
        stop_process(process, timeout=20)


def records(features, txn_ids) -> list[dict]:
    """The request bodies of some transactions: their features, null for NaN."""
    from flows.fraud_risk.steps import FEATURE_COLUMNS  # noqa: PLC0415

    rows = features.filter(features["txn_id"].is_in(list(txn_ids))).select("txn_id", *FEATURE_COLUMNS)
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows.to_dicts()
    ]
