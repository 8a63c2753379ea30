"""`planflow server up | down | status`: the embedded server's lifecycle, for real."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from planflow.ops import server as stack
from planflow.settings import StatePaths

from tests.conftest import free_port


def test_lifecycle_up_twice_status_stale_pid_and_down(tmp_path):
    paths = StatePaths(tmp_path / ".planflow")
    port = free_port()
    assert stack.status(paths).state == "stopped"

    first = stack.up(paths, port=port)
    assert first.running and first.url == f"http://127.0.0.1:{port}/api"
    assert stack.healthy(first.url)
    assert json.loads(paths.server_file.read_text())["port"] == port
    assert (paths.prefect_home / "prefect.db").exists()  # SQLite under the project-local home

    second = stack.up(paths, port=port)  # idempotent: the same process is reused
    assert second.pid == first.pid

    stack.down(paths)
    assert not stack.healthy(first.url)
    assert stack.status(paths).state == "stopped"
    assert not paths.pid_file.exists()

    # A pid file left by a crash, pointing at a process that is gone, is cleaned.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    paths.pid_file.write_text(str(dead.pid))
    paths.server_file.write_text(json.dumps({"url": first.url}))
    assert stack.status(paths).state == "stale"
    try:
        third = stack.up(paths, port=port)
        assert third.running and third.pid != dead.pid
    finally:
        stack.down(paths)


def test_a_port_held_by_another_program_is_reported_with_the_fix(tmp_path):
    paths = StatePaths(tmp_path / ".planflow")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(stack.StackError) as caught:
            stack.up(paths, port=port)
    assert f"port {port} on 127.0.0.1 is already in use by another program" in str(caught.value)
    assert f"planflow server up --port {port + 1}" in str(caught.value)
    assert stack.status(paths).state == "stopped"
