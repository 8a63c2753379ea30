"""`planflow demo`: its deliberate failure reads as intended, not as a broken demo."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import TESTS

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# The part of `planflow demo` that runs demo-failure, in a process of its own so that
# what it prints reaches a real terminal-like stream (as Prefect's log handler writes it).
FAIL_ON_PURPOSE = "import sys; from planflow.cli import demo; demo.fail_on_purpose(sys.argv[1])"


def test_the_deliberate_failure_is_one_line_with_where_to_look(registered_blocks, cli_env):
    out = subprocess.run(
        [sys.executable, "-c", FAIL_ON_PURPOSE, registered_blocks.url],
        env=cli_env,
        cwd=TESTS.parent,  # the project whose pipelines/ holds demo-failure.yaml
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    printed = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len(printed) == 1, out.stdout + out.stderr  # no traceback, no log lines: one line
    ui = registered_blocks.url.removesuffix("/api")
    assert re.fullmatch(
        "demo-failure failed as intended: step 'broken_step' of pipeline 'demo-failure' failed: "
        "RuntimeError: injected failure: this step always fails "
        rf"\(its log: {re.escape(ui)}/v2/runs/flow-run/{UUID}\?tab=Logs\)",
        printed[0],
    ), printed[0]


def test_sigterm_ends_a_command_through_its_finally_blocks_as_ctrl_c_does(tmp_path):
    """`planflow demo heal` stopped with SIGTERM (`timeout`, `kill`) ended at once and left
    its work pool, blocks, deployments and a worker behind, which broke the next demo; after
    sigterm_as_ctrl_c it unwinds as after Ctrl-C."""
    import signal
    import subprocess
    import sys
    import time

    cleaned, ready = tmp_path / "cleaned", tmp_path / "ready"
    script = (
        "import pathlib, time\n"
        "from planflow.cli.interrupt import sigterm_as_ctrl_c\n"
        "sigterm_as_ctrl_c()\n"
        "try:\n"
        f"    pathlib.Path({str(ready)!r}).touch()\n"
        "    time.sleep(60)\n"
        "finally:\n"
        f"    pathlib.Path({str(cleaned)!r}).write_text('taken away')\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert cleaned.read_text() == "taken away", stderr
    assert "KeyboardInterrupt" in stderr
