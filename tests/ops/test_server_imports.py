"""`planflow.ops.server` imports no Prefect: the test harness (tests/conftest.py) takes
free_port from it before it sets PREFECT_API_URL, and Prefect reads its settings when it is
first imported. A Prefect import behind it sent every test's client to an ephemeral server
of its own (work pools "created" where the tests' commands could not see them)."""

from __future__ import annotations

import subprocess
import sys


def test_the_server_module_imports_no_prefect():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, planflow.ops.server; print(sorted(m for m in sys.modules if m.startswith('prefect')))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]", done.stdout
