"""`planflow dask status` against the session's real cluster, and against an address
where no scheduler answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from planflow.ops.server import free_port

PLANFLOW = str(Path(sys.executable).with_name("planflow"))
pytestmark = pytest.mark.slow


def test_dask_status_lists_each_worker_and_a_dead_address_names_the_fix(dask_cluster, cli_env):
    _, state = dask_cluster
    env = {**cli_env, "PLANFLOW_DASK_ADDRESS": state.address, "PLANFLOW_DASK_CONNECT_SECONDS": "3"}
    shown = subprocess.run([PLANFLOW, "dask", "status"], env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    workers = [line for line in shown.stdout.splitlines() if line.startswith("worker")]
    assert len(workers) == 2 and all("local.cpu=2 local.gpu=0 local.mem_gib=2" in w for w in workers), shown.stdout
    dead = f"tcp://127.0.0.1:{free_port()}"
    refused = subprocess.run(
        [PLANFLOW, "dask", "status", "--address", dead], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "unreachable" in refused.stdout and dead in refused.stdout and "planflow dask up" in refused.stdout
