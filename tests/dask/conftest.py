"""One real local Dask cluster for the session: a scheduler and two worker processes,
each offering half of the test's `local` sizing as Dask resources. Runs find it through
PLANFLOW_DASK_ADDRESS, as a user's runs find a scheduler of their own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from planflow.settings import StatePaths

from tests.conftest import own_temp_folder

ROOT = Path(__file__).resolve().parents[2]
# Two workers of local.cpu=2, local.mem_gib=2 each (the components' modules import on them).
SIZING = {"local": {"cpu": 4.0, "gpu": 0.0, "mem_gib": 4.0}}
WORKERS = 2
# A task whose workers died more than this often fails with KilledWorker (dask's default
# is 3): one death is re-run elsewhere, the second ends it, so the test of a step that
# keeps killing its workers needs two worker restarts, not four.
ALLOWED_FAILURES = 1


@pytest.fixture(scope="session")
def dask_cluster(registered_blocks):
    from planflow.ops import dask as cluster

    paths = StatePaths(own_temp_folder("planflow-dask-"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests" / "fixtures")]))
        env.setenv("DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", str(ALLOWED_FAILURES))
        try:
            state = cluster.up(paths, SIZING, workers=WORKERS)
            env.setenv("PLANFLOW_DASK_ADDRESS", state.address)
            yield paths, state
        finally:
            cluster.down(paths)
