"""`planflow serve --replicas`: where its logs go, and a port already taken refused before
anything is started or any log of the service running there is touched."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from planflow.ops.processes import spawn
from planflow.serving.replicas import (
    ServeError,
    haproxy_binary,
    haproxy_config,
    logs_folder,
    serve_one,
    serve_replicas,
)
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


def _haproxy(tmp_path: Path, port: int) -> subprocess.Popen:
    """HAProxy on `port` as `planflow serve --replicas 2` configures it (replicas on the next two
    ports; bodies of at most 1024 bytes, batches of 4), its configuration checked first."""
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config("127.0.0.1", port, [port + 1, port + 2], max_body_bytes=1024, max_batch=4))
    checked = subprocess.run([haproxy_binary(), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return spawn([haproxy_binary(), "-db", "-f", str(config)], tmp_path / "haproxy.log", os.environ, tmp_path)


def test_haproxy_itself_refuses_a_body_over_the_limit_and_a_slow_one_with_the_replicas_json(tmp_path):
    """A replica refused an oversized body by its Content-Length and closed the connection
    with the body unsent; HAProxy, still sending it, often lost the 413 (no answer for 8 of
    20 bodies of 3 MB). And a slow body got HAProxy's HTML 408 after 30 s where a replica
    answers JSON after 10 s. HAProxy now answers both itself (no replica runs here)."""
    import time

    import httpx

    from planflow.ops.processes import free_block
    from planflow.serving.app import BODY_SECONDS

    from tests.serving.conftest import need_haproxy

    need_haproxy()
    port = free_block(3)
    balancer = _haproxy(tmp_path, port)
    try:
        url = f"http://127.0.0.1:{port}/predict"
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "haproxy.log").read_text()
                time.sleep(0.1)
        answers = [httpx.post(url, content=b"0" * 3_000_000, timeout=10) for _ in range(10)]
        assert [a.status_code for a in answers] == [413] * 10
        assert answers[0].json()["detail"] == (
            "request body of 3000000 bytes is over the limit of 1024 bytes. Fix: send at most 4 records per request"
        )

        def chunks(size: int):  # a streamed body: no Content-Length (a replica refused it; HAProxy lost the 413)
            for _ in range(size // 65536):
                yield b"0" * 65536

        streamed = [httpx.post(url, content=chunks(size), timeout=10) for size in [300_000] * 5 + [5_000_000] * 5]
        assert [a.status_code for a in streamed] == [413] * 10
        assert streamed[0].json()["detail"] == (
            "request body is over the limit of 1024 bytes. Fix: send at most 4 records per request"
        )
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            slow.settimeout(BODY_SECONDS + 20)
            started = time.monotonic()
            said = slow.recv(4096).decode()
        assert said.startswith("HTTP/1.1 408") and "content-type: application/json" in said, said
        assert f'"request body not received within {BODY_SECONDS:g} s. Fix: send it at once"' in said, said
        assert time.monotonic() - started < BODY_SECONDS + 5
    finally:
        balancer.terminate()
        balancer.wait(timeout=10)


def test_haproxy_sends_a_failing_request_to_the_model_once_and_retries_a_replica_that_is_loading(tmp_path):
    """`retry-on all-retryable-errors` retried 500s and slow answers too: one input that made
    the model raise ran it 4 times (2 on each replica). Now a 500 is answered as it is, and
    a 503 (a replica loading its model) is sent to the other replica. The replicas here are
    two small HTTP servers of this test (counting the requests they get), not planflow's."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx

    from planflow.ops.processes import free_block

    from tests.serving.conftest import need_haproxy

    need_haproxy()
    port = free_block(3)
    calls: dict[int, int] = {port + 1: 0, port + 2: 0}

    class Replica(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _answer(self, status: int) -> None:
            body = b'{"detail": "x"}'
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # /readyz: both ready for HAProxy's checks
            self._answer(200)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            own = self.server.server_address[1]
            calls[own] += 1
            if self.path == "/predict-loading":  # the first replica is loading its model, the other serves
                self._answer(503 if own == port + 1 else 200)
            else:
                self._answer(200 if self.path == "/predict-ok" else 500)

    servers = [ThreadingHTTPServer(("127.0.0.1", p), Replica) for p in (port + 1, port + 2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    balancer = _haproxy(tmp_path, port)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:  # both replicas in service (a request reaches each in turn)
            try:
                if httpx.post(f"{url}/predict-ok", content=b"{}", timeout=5).status_code == 200 and all(calls.values()):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "haproxy.log").read_text()
            time.sleep(0.1)
        for counted in calls:
            calls[counted] = 0
        for _ in range(4):
            assert httpx.post(f"{url}/predict", content=b"{}", timeout=10).status_code == 500
        assert sum(calls.values()) == 4, calls  # each failing request ran the model once
        for counted in calls:
            calls[counted] = 0
        answers = [httpx.post(f"{url}/predict-loading", content=b"{}", timeout=10).status_code for _ in range(4)]
        assert answers == [200] * 4, (answers, calls)  # the loading replica's 503s went to the other
        assert calls[port + 2] == 4, calls
    finally:
        balancer.terminate()
        balancer.wait(timeout=10)
        for server in servers:
            server.shutdown()
            server.server_close()


def test_haproxys_configuration_is_valid_for_any_body_limit(tmp_path):
    """The buffer that lets HAProxy refuse a streamed body over the limit grows with the
    limit; HAProxy refuses a buffer of 256 MB or more, so `serve --replicas 2
    --max-body-bytes 134217728` would not start. Past MAX_BUFSIZE its default buffer is kept
    (a replica refuses such bodies)."""
    from tests.serving.conftest import need_haproxy

    need_haproxy()
    for limit in (1024, 262_144, 134_217_728, 1 << 30):
        config = tmp_path / f"haproxy-{limit}.cfg"
        config.write_text(haproxy_config("127.0.0.1", 8000, [8001, 8002], max_body_bytes=limit, max_batch=4))
        checked = subprocess.run(
            [haproxy_binary(), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
        )
        assert checked.returncode == 0, (limit, checked.stdout + checked.stderr)
