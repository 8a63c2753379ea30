"""Test harness: one real Prefect server (SQLite) for the whole session.

Prefect reads its settings when first imported, so the environment is set here,
at import, before any test module imports Prefect: the server gets its own
state folder and a free port, apart from the user's `.planflow/`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from planflow.ops.server import free_port  # noqa: E402  (no Prefect import behind it)


def own_temp_folder(prefix: str) -> Path:
    """A new folder in the system's temporary folder, removed when this test process
    exits. Not pytest's tmp_path where a path must be short (a socket's path holds at most
    107 bytes) or reachable by another account (PostgreSQL as root runs as `postgres`)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, True)
    return folder


_HOME = own_temp_folder("planflow-test-")
_PORT = free_port()
os.environ["PLANFLOW_HOME"] = str(_HOME)
# planflow records its servers per user; the test sessions keep that record to themselves.
os.environ["XDG_STATE_HOME"] = str(_HOME / "xdg-state")
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{_PORT}/api"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from planflow.settings import StatePaths, apply_client_env  # noqa: E402

apply_client_env(StatePaths(_HOME))

TESTS = Path(__file__).parent
IN_CI = os.environ.get("CI", "").lower() == "true"
# The session server's database: sqlite (default) or postgres (the scale-out profile;
# .ci/run runs the server-backed history and fleet tests on it too).
TEST_DB = os.environ.get("PLANFLOW_TEST_DB", "sqlite")
SHARED_PSPLIB = TESTS.parent.parent / "shared" / "psplib"  # never copied into the repository


# -- two workers (pytest-xdist; `make test` runs `-n 2 --dist loadgroup`) ---------------------
# The tests of one folder share things that are machine-wide or costly to start twice:
# worker processes found by their name, Docker containers by their label, a monitoring
# stack or a Dask cluster per session. So each folder runs on one xdist worker, the longest
# folders first; the modules of `flows` and `planner` share only the worker's own Prefect
# server (each worker has its own, on its own port) and spread one module at a time.
# The groups are computed from the test's path by the scheduler below, not with
# `xdist_group` marks: xdist 3.8 writes a mark's group into `item._nodeid`, which
# pytest 9 no longer reads, so marked tests were silently spread one by one.
SPREAD_BY_MODULE = {"flows", "planner"}
LONGEST_FIRST = ["remediation", "deployments", "e2e", "planflow", "monitoring", "serving", "dask", "ops", "runtime"]


def _folder(nodeid: str) -> str:
    """A test's folder under tests/ (its module for a module directly in tests/)."""
    module = nodeid.split("::", 1)[0]
    parts = module.split("/")
    return parts[1] if len(parts) > 2 else module


def xdist_work_unit(nodeid: str) -> str:
    """The xdist work unit of a test: its folder under tests/, or its module for the
    folders whose modules share nothing machine-wide."""
    folder = _folder(nodeid)
    return nodeid.split("::", 1)[0] if folder in SPREAD_BY_MODULE else folder


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        folder = _folder(item.nodeid)
        return LONGEST_FIRST.index(folder) if folder in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: a folder's tests keep their order


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FolderScheduling(LoadScopeScheduling):
        """xdist's scope scheduling with `xdist_work_unit` as the scope: a work unit is a whole
        folder (or module), and units go out in collection order (`--no-loadscope-reorder`)."""

        def _split_scope(self, nodeid: str) -> str:
            return xdist_work_unit(nodeid)

    return FolderScheduling(config, log)


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server (SQLite, or PostgreSQL with PLANFLOW_TEST_DB=postgres),
    started once per session and stopped after."""
    from planflow.ops import server as stack

    paths = StatePaths(_HOME)
    state = stack.up(paths, port=_PORT, db=TEST_DB)
    yield state
    # Send buffered logs and events before the server goes away.
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    stack.down(paths)


@pytest.fixture(scope="session")
def registered_blocks(prefect_server):
    from planflow.prefect.blocks import ensure_defaults

    ensure_defaults()
    return prefect_server


@pytest.fixture
def cli_env(prefect_server) -> dict[str, str]:
    """Environment for running the `planflow` command against the test server."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS / "fixtures"), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="session")
def psplib() -> Path:
    """The PSPLIB folder (../shared/psplib or PLANFLOW_PSPLIB_DIR); missing data fails
    under CI=true and skips elsewhere."""
    folder = Path(os.environ.get("PLANFLOW_PSPLIB_DIR") or SHARED_PSPLIB)
    if not (folder / "j30" / "j301_1.sm").exists():
        message = f"PSPLIB data not found at {folder} (set PLANFLOW_PSPLIB_DIR)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return folder


# -- shared by several folders: one session instance each --------------------------------
@pytest.fixture(scope="session")
def monitoring_stack(prefect_server):
    """Prometheus, Alertmanager, Pushgateway, exporter and bridge (fast profile) in a
    state folder of their own, watching the session's Prefect server."""
    from tests.monitoring.helpers import free_port as port
    from tests.monitoring.helpers import need_binary

    need_binary("prometheus")
    need_binary("prometheus-alertmanager", "alertmanager")
    need_binary("prometheus-pushgateway", "pushgateway")
    from planflow.ops import services

    paths = StatePaths(own_temp_folder("planflow-monitoring-"))
    ports = {name: port() for name in services.ORDER}
    try:
        started = services.up(paths, profile="fast", ports=ports)
        yield paths, started
    finally:
        services.down(paths)


@pytest.fixture(scope="session")
def docker_image() -> str:
    """The planflow image: found, or built with scripts/build-image.sh when missing."""
    import subprocess

    from tests.deployments.conftest import IMAGE, ROOT, docker_problem, skip_or_fail

    problem = docker_problem()
    if problem:
        skip_or_fail(problem)
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        build = subprocess.run(
            ["bash", str(ROOT / "scripts" / "build-image.sh"), IMAGE], capture_output=True, text=True, timeout=1200
        )
        if build.returncode != 0:
            pytest.fail(f"scripts/build-image.sh failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
    return IMAGE


@pytest.fixture(scope="session")
def work_pools(prefect_server) -> list[str]:
    """planflow's three work pools on the test server (no ResourcePool blocks: other
    tests plan over the pools that exist)."""
    from planflow.prefect.workpools import apply_work_pools

    return apply_work_pools(resource_pools=False)
