"""`make test` runs two pytest-xdist workers; a folder's tests must share one of them
(they share machine-wide things: workers by name, containers by label). This runs pytest
on two workers over small real modules and checks where each test ran."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict

from tests.conftest import TESTS, xdist_work_unit

RECORDER = """
import os

def pytest_runtest_setup(item):
    with open(os.environ["WORK_UNITS_OUT"], "a") as out:
        out.write(f"{os.environ.get('PYTEST_XDIST_WORKER')} {item.nodeid}\\n")
"""


def test_a_folder_is_one_work_unit_and_flows_spread_by_module():
    assert xdist_work_unit("tests/ops/test_processes.py::test_x") == "ops"
    assert xdist_work_unit("tests/ops/test_waiting.py::test_y[a@b]") == "ops"
    assert xdist_work_unit("tests/flows/test_dispatch.py::test_z") == "tests/flows/test_dispatch.py"
    assert xdist_work_unit("tests/test_top.py::test_w") == "tests/test_top.py"


def test_two_workers_run_each_folder_on_one_of_them(tmp_path):
    (tmp_path / "work_unit_recorder.py").write_text(RECORDER)
    out = tmp_path / "ran.txt"
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, WORK_UNITS_OUT=str(out), PYTHONPATH=path)
    env.pop("PYTEST_XDIST_WORKER", None)
    modules = ["tests/ops/test_processes.py", "tests/ops/test_waiting.py", "tests/grafana"]
    modules.append("tests/runtime/test_memory_oom.py")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "work_unit_recorder", "-n", "2", "--dist", "loadgroup"]
        + ["--no-loadscope-reorder", "-p", "no:cacheprovider", "-o", "addopts=", *modules],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    workers = defaultdict(set)
    for line in out.read_text().splitlines():
        worker, nodeid = line.split(" ", 1)
        workers[nodeid.split("/")[1]].add(worker)
    assert set(workers) == {"ops", "grafana", "runtime"}, workers
    assert all(len(ran_on) == 1 for ran_on in workers.values()), workers
    assert set().union(*workers.values()) == {"gw0", "gw1"}, workers  # both workers were used
