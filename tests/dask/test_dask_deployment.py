"""Dask mode through a deployment: `mode=dask` as a deployment parameter, the flow run
picked up by a real process worker, its components run on the session's local Dask
cluster (tests/dask/conftest.py)."""

from __future__ import annotations

import pytest
from prefect.deployments import run_deployment

from tests.dask.test_dask_mode import SMALL
from tests.deployments.conftest import PREFECT, PREFECT_FILE, run_cli, wait_for_final_state

pytestmark = [pytest.mark.usefixtures("dask_cluster", "work_pools"), pytest.mark.slow]

DEPLOYMENT = "predictive-maintenance-process"


def test_a_deployment_run_with_mode_dask_runs_its_components_on_the_cluster():
    deploy = run_cli([PREFECT, "--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE), "--name", DEPLOYMENT])
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    flow_run = run_deployment(
        f"predictive-maintenance/{DEPLOYMENT}", parameters={**SMALL, "mode": "dask", "refresh": True}, timeout=0
    )
    # --run-once: the worker submits the scheduled run, waits for it and exits
    worker = run_cli([PREFECT, "worker", "start", "--pool", "local-process", "--run-once"], timeout=300)
    run = wait_for_final_state(flow_run.id, timeout=60)
    assert run.state.is_completed(), (
        f"flow run ended {run.state.type}: {run.state.message}\n"
        f"worker output:\n{worker.stdout[-4000:]}\n{worker.stderr[-4000:]}"
    )
    summary = run.state.result()
    assert summary["mode"] == "dask"
    # computed on the cluster (refresh: another test's run of the same inputs would be read from the cache)
    assert {s["state"] for s in summary["steps"].values()} == {"Completed"}
    metrics = {k: v for s in summary["steps"].values() for k, v in s["metrics"].items()}
    assert metrics["f1"] > 0.5  # computed on the Dask workers
