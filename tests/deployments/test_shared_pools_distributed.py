"""Distributed mode shares pools too: runs whose components are child flow runs on one
work pool, started together from processes of their own, never hold more than the
pool's capacity (the parent takes the slots before it starts a child, and gives them
back when the child ends)."""

from __future__ import annotations

import os

import pytest

from planflow.prefect.limits import active_slots, limit_name

from tests.deployments.conftest import PREFECT, PREFECT_FILE, run_cli
from tests.deployments.test_distributed import worker
from tests.flows.test_shared_pools import (  # noqa: F401 (pool: the fixture that creates the pool)
    CAPACITY,
    POOL,
    TESTS,
    _intervals,
    _start_runs,
    _wait,
    peak_cpu,
    pool,
)

pytestmark = pytest.mark.usefixtures("registered_blocks", "pool")


@pytest.fixture(scope="module")
def process_deployment(work_pools):
    name = "run-component/local-process"
    out = run_cli([PREFECT, "--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE), "--name", name])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def test_concurrent_distributed_runs_on_one_pool_never_exceed_its_capacity(process_deployment, tmp_path, monkeypatch):
    """Three runs of two cpu=1 children on a 2-cpu pool: at most two children hold it."""
    monkeypatch.setenv("PLANFLOW_INTERVALS", str(tmp_path / "intervals.tsv"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS / "fixtures"), os.environ.get("PYTHONPATH", "")]))
    with worker("local-process", "process"):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env["PYTHONPATH"]])
        _wait(_start_runs(tmp_path, [("wide_remote", {"seconds": 6.0, "mode": "distributed"})] * 3, env), timeout=600)
    rows = _intervals(tmp_path)
    assert len(rows) == 6 and peak_cpu(rows) <= CAPACITY["cpu"]
    assert active_slots([limit_name(POOL, "cpu")]) == {limit_name(POOL, "cpu"): 0}
