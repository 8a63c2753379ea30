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


def test_dask_up_on_a_port_in_use_is_refused_at_once(tmp_path):
    """Something else listens on the port asked for: refused before anything starts (a
    client asking it for a Dask scheduler used to wait without bound), nothing recorded."""
    import socket

    from planflow.ops import dask as dask_ops
    from planflow.runtime.dask_cluster import DaskClusterError
    from planflow.settings import StatePaths

    paths = StatePaths(tmp_path / ".planflow")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DaskClusterError) as refused:
            dask_ops.up(paths, {"local": {"cpu": 1, "gpu": 0, "mem_gib": 1}}, port=port)
    assert str(refused.value) == (
        f"port {port} on 127.0.0.1 is already in use. Fix: choose another --port, or leave it out (a free one)"
    )
    assert not dask_ops.cluster_file(paths).exists()
