"""`planflow server up | down | status`: the embedded server's lifecycle, for real;
the per-user record that tells another project's server from a stranger's; the server
found from a subfolder of its project; state files private to their user."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from planflow.ops import server as stack
from planflow.settings import StatePaths

from tests.conftest import free_port
from tests.e2e.userproject import clean_env, write_project

PLANFLOW = Path(sys.executable).with_name("planflow")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def user_state(tmp_path, monkeypatch) -> Path:
    """XDG_STATE_HOME of this test: the per-user record starts empty."""
    folder = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(folder))
    return folder


def test_lifecycle_up_twice_status_stale_pid_and_down(tmp_path, user_state):
    paths = StatePaths(tmp_path / ".planflow")
    port = free_port()
    assert stack.status(paths).state == "stopped"

    first = stack.up(paths, port=port)
    assert first.running and first.url == f"http://127.0.0.1:{port}/api"
    assert stack.healthy(first.url)
    assert json.loads(paths.server_file.read_text())["port"] == port
    assert (paths.prefect_home / "prefect.db").exists()  # SQLite under the project-local home
    record = json.loads((user_state / "planflow" / "servers.json").read_text())["servers"]
    assert record[str(port)]["home"] == str(paths.home) and record[str(port)]["pid"] == first.pid

    second = stack.up(paths, port=port)  # idempotent: the same process is reused
    assert second.pid == first.pid

    # The wall clock steps an hour (a new VM's first time sync): the start times recorded
    # no longer match psutil's, whose epoch time moves with the clock. The server is known
    # by its start in ticks since boot, which do not move; status, up and down still find it.
    servers_file = user_state / "planflow" / "servers.json"
    for file, entry in ((paths.server_file, lambda r: r), (servers_file, lambda r: r["servers"][str(port)])):
        shifted = json.loads(file.read_text())
        entry(shifted)["started"] -= 3600
        file.write_text(json.dumps(shifted))
    assert stack.status(paths).running
    assert stack.up(paths, port=port).pid == first.pid

    stack.down(paths)
    assert not stack.healthy(first.url)
    assert stack.status(paths).state == "stopped"
    assert not paths.pid_file.exists()
    assert json.loads((user_state / "planflow" / "servers.json").read_text())["servers"] == {}

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


def test_a_port_held_by_another_program_is_reported_with_the_fix(tmp_path, user_state):
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


def test_a_prefect_server_missing_from_the_user_record_is_not_started_by_planflow(prefect_server, tmp_path, user_state):
    # The session's server is not in this test's (empty) per-user record: to this test it is a stranger.
    port = int(prefect_server.url.removesuffix("/api").rsplit(":", 1)[1])
    paths = StatePaths(tmp_path / ".planflow")
    with pytest.raises(stack.StackError) as caught:
        stack.up(paths, port=port)
    assert f"port {port} on 127.0.0.1 is already in use by a Prefect server not started by planflow" in str(
        caught.value
    )
    assert not paths.home.exists()


# -- one project's server, seen from elsewhere ---------------------------------------------
@pytest.fixture(scope="module")
def project_a(tmp_path_factory):
    """A user's project with its embedded server up, recorded in a per-user record of
    this module's own."""
    root = tmp_path_factory.mktemp("servers")
    project = write_project(root / "project-a")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(root / "xdg-state"))
        paths = StatePaths(project / ".planflow")
        state = stack.up(paths, port=free_port())
        try:
            yield paths, state, root
        finally:
            stack.down(paths)


def test_a_port_held_by_another_projects_server_names_that_project(project_a):
    paths_a, state, root = project_a
    port = json.loads(paths_a.server_file.read_text())["port"]
    project_b = write_project(root / "project-b")
    paths_b = StatePaths(project_b / ".planflow")
    with pytest.raises(stack.StackError) as caught:
        stack.up(paths_b, port=port)
    message = str(caught.value)
    assert (
        f"port {port} on 127.0.0.1 is held by the planflow server of another project, {paths_a.project} "
        f"(state folder {paths_a.home}, pid {state.pid}); this project is {project_b}." in message
    )
    assert f"`cd {paths_a.project} && planflow server down`" in message
    assert f"`planflow server up --port {port + 1}`" in message
    assert not paths_b.home.exists()


def test_state_files_are_private_to_their_user(project_a):
    paths, _, root = project_a
    assert mode(paths.home) == 0o700 and mode(paths.prefect_home) == 0o700
    for file in (paths.server_file, paths.pid_file, paths.log_file):
        assert mode(file) == 0o600, file
    record = root / "xdg-state" / "planflow" / "servers.json"
    assert mode(record) == 0o600 and mode(record.parent) == 0o700


def test_the_server_is_found_from_a_subfolder_of_its_project(project_a):
    paths, state, root = project_a
    subfolder = paths.project / "flows" / "wordcount"
    env = clean_env(PLANFLOW.parent, root / "home", XDG_STATE_HOME=str(root / "xdg-state"))
    shown = subprocess.run(
        [str(PLANFLOW), "server", "status"], cwd=subfolder, env=env, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "state: running" in shown.stdout and f"url:   {state.url}" in shown.stdout
    exports = subprocess.run(
        [str(PLANFLOW), "env"], cwd=subfolder, env=env, capture_output=True, text=True, timeout=120
    ).stdout
    assert f"export PREFECT_API_URL={state.url}" in exports
    assert f"export PLANFLOW_HOME={paths.home}" in exports
    assert not list((paths.project / "flows").rglob(".planflow"))


def test_a_frozen_server_is_named_with_the_wait_and_what_follows(project_a):
    """A server that runs but does not answer (frozen: SIGSTOP) kept `planflow run` silent
    for minutes after "Starting the embedded Prefect server", then a new server came."""
    paths, state, root = project_a
    env = clean_env(PLANFLOW.parent, root / "home", XDG_STATE_HOME=str(root / "xdg-state"))
    os.kill(state.pid, signal.SIGSTOP)
    try:
        command = subprocess.Popen(
            [str(PLANFLOW), "pools", "ls"], cwd=paths.project, env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            _, stderr = command.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            command.kill()
            _, stderr = command.communicate()
    finally:
        os.kill(state.pid, signal.SIGCONT)
    said = " ".join(stderr.split())
    assert f"The embedded Prefect server (pid {state.pid}) runs but {state.url}/health does not answer" in said, said
    assert "waiting up to 120 s for it, then it is stopped and started again" in said and str(paths.log_file) in said
    assert "Starting the embedded Prefect server" not in said
    assert stack.healthy(state.url, timeout=10)


def test_a_server_whose_pid_file_was_lost_is_adopted_not_reported(project_a):
    paths, state, _ = project_a
    port = json.loads(paths.server_file.read_text())["port"]
    paths.pid_file.unlink()
    paths.server_file.unlink()
    assert stack.status(paths).state == "stopped"
    again = stack.up(paths, port=port)
    assert again.running and again.pid == state.pid and again.url == state.url


def test_a_busy_server_is_waited_for_and_an_answer_that_will_not_change_is_not():
    """`health_problem` (what commands ask before they use PREFECT_API_URL): a health check
    that takes longer than the 2 s probe (a busy server on a loaded machine) is asked again
    until it is answered; a port nothing listens on, a URL that is not http(s) and
    something else answering are final at once, each named with its fix."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked: list[float] = []

    class SlowFirst(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            asked.append(time.monotonic())
            if len(asked) == 1:
                time.sleep(3)  # the first check outlasts the probe's 2 s
            self.send_response(200 if self.path == "/api/health" else 404)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowFirst)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    try:
        assert stack.health_problem(url, within=30) is None
        assert len(asked) >= 2, "the slow first check was not cut and asked again"
        started = time.monotonic()
        root = url.removesuffix("/api")  # not the API: its /health is a 404 here
        assert stack.health_problem(root, within=60) == (
            f"{root}/health answered 404, not a Prefect API's health check",
            "give PREFECT_API_URL as the Prefect API's address, ending in /api",
        )
        assert time.monotonic() - started < 30, "an answer that will not change was asked again until the bound"
    finally:
        server.shutdown()
        server.server_close()
    started = time.monotonic()
    refused = stack.health_problem(f"http://127.0.0.1:{free_port()}/api", within=60)
    assert refused is not None and refused[0].startswith("nothing answers there (") and "start it" in refused[1]
    no_scheme = stack.health_problem(f"127.0.0.1:{free_port()}/api", within=60)  # PREFECT_API_URL without http://
    assert no_scheme is not None and no_scheme[0].startswith("not a URL to ask"), no_scheme
    assert time.monotonic() - started < 30, "a closed port or a bad URL was waited on as if the server were busy"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key (PEM files in `folder`)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "planflow-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def test_a_tls_server_is_checked_as_prefects_client_would_and_an_untrusted_one_is_named(tmp_path):
    """The health check of an https PREFECT_API_URL verifies as Prefect's client does (its
    CA file, PREFECT_API_SSL_CERT_FILE): it used httpx's defaults, and an untrusted
    certificate read as "does not answer. Fix: start it" for a server that runs."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prefect.settings import PREFECT_API_SSL_CERT_FILE, temporary_settings

    class Healthy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args: object) -> None:
            pass

    cert, key = _self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/api"
    try:
        untrusted = stack.health_problem(url, within=30)
        assert untrusted is not None and untrusted[0].startswith("its TLS certificate is not trusted"), untrusted
        assert "PREFECT_API_SSL_CERT_FILE" in untrusted[1]
        with temporary_settings(updates={PREFECT_API_SSL_CERT_FILE: str(cert)}):
            assert stack.health_problem(url, within=30) is None
    finally:
        server.shutdown()
        server.server_close()
