"""One real local Dask cluster for the session: a scheduler and two worker processes,
each offering half of the test's `local` sizing as Dask resources. Runs find it through
PLANFLOW_DASK_ADDRESS, as a user's runs find a scheduler of their own."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from planflow.settings import StatePaths

ROOT = Path(__file__).resolve().parents[2]
# Two workers of local.cpu=2, local.mem_gib=2 each (the components' modules import on them).
SIZING = {"local": {"cpu": 4.0, "gpu": 0.0, "mem_gib": 4.0}}
WORKERS = 2


@pytest.fixture(scope="session")
def dask_cluster(registered_blocks):
    from planflow.ops import dask as cluster

    paths = StatePaths(Path(tempfile.mkdtemp(prefix="planflow-dask-")))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests" / "fixtures")]))
        try:
            state = cluster.up(paths, SIZING, workers=WORKERS)
            env.setenv("PLANFLOW_DASK_ADDRESS", state.address)
            yield paths, state
        finally:
            cluster.down(paths)
