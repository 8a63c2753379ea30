"""`planflow serve --replicas`: where its logs go, and a port already taken refused before
anything is started or any log of the service running there is touched."""

from __future__ import annotations

import os
import socket
import stat
import sys

import pytest

from planflow.ops.processes import spawn
from planflow.serving.replicas import ServeError, logs_folder, serve_one, serve_replicas
from planflow.settings import StatePaths


def test_the_logs_folder_is_private_in_the_state_folder_and_emptied_per_start(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANFLOW_HOME", str(tmp_path / "state"))
    folder = logs_folder(8765)
    assert folder == StatePaths.discover().home / "serve" / "8765"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    (folder / "replica-8766.log").write_text("the last service's log")
    (folder / "haproxy.cfg").write_text("old")
    (folder / "notes.txt").write_text("the user's own file")
    assert logs_folder(8765) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_a_port_in_use_is_refused_naming_it_and_the_running_services_logs_are_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANFLOW_HOME", str(tmp_path / "state"))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1] - 1  # the first replica's port is taken
        folder = StatePaths.discover().home / "serve" / str(port)
        folder.mkdir(parents=True)
        (folder / "haproxy.log").write_text("the running service's log")
        with pytest.raises(ServeError) as refused:
            serve_replicas("no-such-pipeline", "127.0.0.1", port, 2, poll_seconds=1.0, max_body_bytes=1024)
    message = str(refused.value)
    assert f"{port + 1}" in message.split(" on 127.0.0.1 is already in use")[0]
    assert "choose another --port" in message
    assert (folder / "haproxy.log").read_text() == "the running service's log"


def test_one_replica_on_a_port_in_use_is_refused_before_anything_loads():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError) as refused:  # a target that does not exist: never looked up
            serve_one("no-such-pipeline", "127.0.0.1", port, poll_seconds=1.0, max_body_bytes=1024)
    assert str(refused.value) == (
        f"port {port} on 127.0.0.1 is already in use (another `planflow serve`?). "
        "Fix: stop it, or choose another --port"
    )


def test_a_background_services_log_is_private(tmp_path):
    log = tmp_path / "logs" / "service.log"
    spawn([sys.executable, "-c", "print('hello')"], log, os.environ, tmp_path).wait(30)
    assert log.read_text() == "hello\n" and stat.S_IMODE(log.stat().st_mode) == 0o600
