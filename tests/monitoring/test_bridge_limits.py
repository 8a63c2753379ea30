"""The bridge as its own process (`python -m planflow.monitoring.bridge`), against hostile
and broken input: the token before the body, bounded bodies and schema, slow bodies
cut, a full disk named, and readiness that tells the truth (a corrupted spool; a
Prefect server that answers 401). Memory is read from the process itself (VmHWM)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from planflow.monitoring.bridge import Spool
from planflow.ops import server as stack
from planflow.ops.processes import stop_process
from planflow.settings import StatePaths

from tests.conftest import own_temp_folder
from tests.monitoring.helpers import IN_CI, alert, free_port, wait_for, webhook

TOKEN = "limits-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY_TIMEOUT = 2.0
HEADER_TIMEOUT = 3.0  # seconds to send a whole request head
RSS_BOUND_MB = 200


class BridgeProcess:
    def __init__(self, process: subprocess.Popen, url: str, state_dir: Path, log: Path) -> None:
        self.process, self.url, self.state_dir, self.log = process, url, state_dir, log

    def peak_rss_mb(self) -> float:
        """The process's high-water mark of resident memory (VmHWM), in MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc/<pid>/status")

    def ready(self) -> httpx.Response:
        return httpx.get(f"{self.url}/ready", timeout=10)


@contextmanager
def bridge_process(
    state_dir: Path, api_url: str, *extra: str, env: dict[str, str] | None = None
) -> Iterator[BridgeProcess]:
    port = free_port()
    log = state_dir.parent / f"bridge-{port}.log"
    environment = {k: v for k, v in os.environ.items() if k != "PREFECT_API_AUTH_STRING"}
    environment.update({"PLANFLOW_BRIDGE_TOKEN": TOKEN, **(env or {})})
    command = [sys.executable, "-m", "planflow.monitoring.bridge", "--port", str(port)]
    command += ["--state-dir", str(state_dir), "--prefect-api-url", api_url, "--body-timeout", str(BODY_TIMEOUT)]
    command += ["--header-timeout", str(HEADER_TIMEOUT)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, *extra], env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    bridge = BridgeProcess(process, f"http://127.0.0.1:{port}", state_dir, log)

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the bridge exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{bridge.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, 60, "the bridge to answer /health", interval=0.2)
        yield bridge
    finally:
        stop_process(process, timeout=10)


@pytest.fixture(scope="module")
def bridge(prefect_api_url, tmp_path_factory) -> Iterator[BridgeProcess]:
    with bridge_process(tmp_path_factory.mktemp("limits") / "state", prefect_api_url) as running:
        yield running


def integers_body(count: int) -> bytes:
    """The issue's body: `alerts` = `count` integers (1.9 M of them: 3.8 MB)."""
    return b'{"alerts":[' + b",".join([b"0"] * count) + b"]}"


def raw_request(url: str, head: str, body: bytes = b"", wait: float = 15.0) -> tuple[bytes, float]:
    """Send `head` (and `body`) on a raw socket; read until the server closes or `wait`
    passes. Returns what came back and the seconds it took."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(head.encode() + body)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received, time.monotonic() - started


def test_a_38_mb_body_of_integers_is_refused_cheaply(bridge):
    body = integers_body(1_900_000)
    assert len(body) > 3_800_000
    with_length = httpx.post(
        f"{bridge.url}/alerts", content=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=30
    )
    assert with_length.status_code == 413, with_length.text[:500]
    assert "limit" in with_length.json()["error"] and len(with_length.content) < 1000

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts what arrives
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    try:
        chunked = httpx.post(
            f"{bridge.url}/alerts", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}, timeout=30
        )
        assert chunked.status_code == 413, chunked.text[:500]
    except httpx.TransportError:
        pass  # the bridge answered 413 and closed while the rest was still on its way
    peak = bridge.peak_rss_mb()
    print(f"\n[bridge memory] peak RSS after the 3.8 MB bodies: {peak:.0f} MiB")
    assert peak < RSS_BOUND_MB, f"the bridge's peak RSS reached {peak:.0f} MiB"


def test_a_body_within_the_limit_is_bounded_before_alerts_are_made(bridge):
    body = integers_body(1_000_000)  # 2 MB: just under the limit
    response = httpx.post(
        f"{bridge.url}/alerts", content=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=60
    )
    assert response.status_code == 422, response.text[:500]
    problems = response.json()["problems"]
    assert len(problems) == 1 and "at most 1000" in problems[0], problems
    assert len(response.content) < 2000
    too_many_labels = alert(**{f"l{i}": "v" for i in range(80)})
    response = httpx.post(f"{bridge.url}/alerts", json=webhook(too_many_labels), headers=AUTH, timeout=30)
    assert response.status_code == 422 and "alerts.0.labels" in response.text
    long_value = alert(pipeline="p" * 5000)
    response = httpx.post(f"{bridge.url}/alerts", json=webhook(long_value), headers=AUTH, timeout=30)
    assert response.status_code == 422 and "at most 1024" in response.text
    assert bridge.peak_rss_mb() < RSS_BOUND_MB


def test_the_token_is_checked_before_the_body_is_read(bridge):
    head = (
        "POST /alerts HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer wrong\r\n"
        "Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
    )
    answer, took = raw_request(bridge.url, head)  # no body sent at all
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"bearer token" in answer
    assert took < BODY_TIMEOUT, f"the 401 waited for the body ({took:.1f} s)"


def test_a_slow_body_is_cut_off(bridge):
    head = (
        f"POST /alerts HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    answer, took = raw_request(bridge.url, head, b'{"alerts": [')  # ...and the rest never comes
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"not received within" in answer
    assert took < BODY_TIMEOUT + 10, f"the connection stayed open {took:.1f} s"


def test_a_slow_request_head_is_cut_off(bridge):
    """A client that trickles its headers (one byte a second, never ending them) is
    disconnected once the head is HEADER_TIMEOUT late, instead of holding a connection."""
    host, port = bridge.url.removeprefix("http://").split(":")
    started = time.monotonic()
    closed_after = None
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /alerts HTTP/1.1\r\nHost: bridge\r\n")
        for _ in range(int(HEADER_TIMEOUT * 5)):
            try:
                sock.sendall(b"X")  # a header name that never ends
                sock.settimeout(1.0)
                if sock.recv(1024) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None, f"still open after {time.monotonic() - started:.1f} s of a trickled head"
    assert HEADER_TIMEOUT - 0.5 <= closed_after < HEADER_TIMEOUT + 3, closed_after
    assert httpx.get(f"{bridge.url}/health", timeout=5).status_code == 200  # the bridge itself is fine


def trickle_after_answer(url: str, head: bytes, seconds: float) -> tuple[bytes, float | None]:
    """Send `head` (announcing a body), read the answer, then send its body one byte a
    second; the answer and when the server closed the connection (None: still open after
    `seconds`)."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head)
        answer = sock.recv(65536)
        while time.monotonic() - started < seconds:
            try:
                sock.sendall(b"x")
                sock.settimeout(1.0)
                if sock.recv(1024) == b"":
                    return answer, time.monotonic() - started
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return answer, time.monotonic() - started
    return answer, None


def test_a_body_trickled_after_the_answer_is_cut_off(bridge):
    """A request the app answers without reading its body (a GET with a Content-Length):
    h11 waits for the body before the next request, and uvicorn's keep-alive timer
    restarted at each byte, so one byte a second kept the connection for ever (20 s in a
    trial with a 3 s header deadline), to anyone, without a token."""
    head = b"GET /health HTTP/1.1\r\nHost: bridge\r\nContent-Length: 100000000\r\n\r\n"
    answer, closed_after = trickle_after_answer(bridge.url, head, HEADER_TIMEOUT + 12)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert closed_after is not None, "still open after a body trickled in past the header deadline"
    assert closed_after < HEADER_TIMEOUT + 3, closed_after


def test_connections_without_a_token_do_not_deny_alertmanager(bridge):
    """64 half-sent request heads from anyone made every Alertmanager POST a 503 (uvicorn's
    limit_concurrency counts connections before any token is read)."""
    host, port = bridge.url.removeprefix("http://").split(":")
    held = []
    try:
        for _ in range(80):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"POST /alerts HTTP/1.1\r\nHost: bridge\r\n")  # the head never ends
            held.append(sock)
        posted = httpx.post(f"{bridge.url}/alerts", json=webhook(alert(fingerprint="among-80")), headers=AUTH)
        assert posted.status_code == 200, posted.text
    finally:
        for sock in held:
            sock.close()


def test_oversized_headers_are_refused(bridge):
    head = f"GET /health HTTP/1.1\r\nHost: bridge\r\nX-Filler: {'a' * 64 * 1024}\r\n\r\n"
    answer, _ = raw_request(bridge.url, head)
    assert answer == b"" or answer.split(b" ")[1] in (b"400", b"431"), answer[:200]


def test_placeholder_token_stops_the_bridge_with_the_fix(tmp_path, prefect_api_url):
    run = subprocess.run(
        [sys.executable, "-m", "planflow.monitoring.bridge", "--state-dir", str(tmp_path)],
        env={**os.environ, "PLANFLOW_BRIDGE_TOKEN": "change-me-before-applying", "PREFECT_API_URL": prefect_api_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "placeholder" in run.stderr and "openssl rand" in run.stderr


# -- readiness ------------------------------------------------------------------------
def corrupt_middle_pages(path: Path) -> None:
    """Overwrite every page but the first (the schema) with garbage, as a torn disk would."""
    page = 4096
    size = path.stat().st_size
    assert size > 8 * page, f"spool too small to corrupt ({size} bytes)"
    with path.open("r+b") as file:
        for offset in range(page, size - page, page):
            file.seek(offset)
            file.write(os.urandom(page))


def test_ready_fails_naming_a_corrupted_spool(prefect_api_url, tmp_path):
    state = tmp_path / "state"
    spool = Spool(state / "bridge-spool.sqlite3")
    spool.store([(f"k{i}", json.dumps({"pad": "x" * 900}), time.time()) for i in range(400)])
    spool.close()  # the last connection: the WAL is checkpointed into the file
    corrupt_middle_pages(state / "bridge-spool.sqlite3")
    with bridge_process(state, prefect_api_url) as bridge:
        posted = httpx.post(f"{bridge.url}/alerts", json=webhook(alert(fingerprint="corrupt")), headers=AUTH)
        assert posted.status_code == 503, posted.text
        ready = bridge.ready()
        assert ready.status_code == 503, ready.text
        causes = " ".join(ready.json()["causes"])
        assert "bridge-spool.sqlite3" in causes and ("corrupt" in causes or "malformed" in causes), causes
        assert httpx.get(f"{bridge.url}/health").status_code == 200  # liveness stays simple


@pytest.fixture(scope="module")
def auth_server(prefect_server) -> Iterator[tuple[str, str, StatePaths]]:
    """A Prefect server of its own with basic auth on (PREFECT_SERVER_API_AUTH_STRING),
    started in a state folder an older planflow left readable (0755, a 0644 file)."""
    home = own_temp_folder("planflow-auth-")
    home.chmod(0o755)
    (home / "prefect").mkdir(mode=0o755)
    (home / "prefect").chmod(0o755)
    (home / "prefect" / "left-behind.json").write_text("{}")
    (home / "prefect" / "left-behind.json").chmod(0o644)
    paths, port, auth = StatePaths(home), free_port(), "admin:" + uuid.uuid4().hex
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_SERVER_API_AUTH_STRING", auth)
        stack.up(paths, port=port)
    try:
        yield f"http://127.0.0.1:{port}/api", auth, paths
    finally:
        stack.down(paths)


def test_ready_fails_naming_a_401_from_prefect_and_passes_with_the_auth_string(auth_server, tmp_path):
    api, auth, _ = auth_server
    assert httpx.get(f"{api}/flows/filter", timeout=10).status_code in (401, 405)  # auth is really on
    with bridge_process(tmp_path / "without", api, "--undelivered-after", "1") as bridge:
        posted = httpx.post(f"{bridge.url}/alerts", json=webhook(alert(fingerprint="auth-401")), headers=AUTH)
        assert posted.status_code == 200, posted.text  # stored: it waits in the spool
        ready = wait_for(
            lambda: (lambda r: r if r.status_code == 503 else None)(bridge.ready()), 30, "/ready to fail", interval=0.5
        )
        causes = " ".join(ready.json()["causes"])
        assert "401" in causes and "PREFECT_API_AUTH_STRING" in causes and api in causes, causes
        assert ready.json()["spool_depth"] == 1
    env = {"PREFECT_API_AUTH_STRING": auth}
    with bridge_process(tmp_path / "with", api, "--undelivered-after", "1", env=env) as bridge:
        posted = httpx.post(f"{bridge.url}/alerts", json=webhook(alert(fingerprint="auth-ok")), headers=AUTH)
        assert posted.status_code == 200, posted.text
        wait_for(lambda: bridge.ready().json()["spool_depth"] == 0, 30, "the spool to drain", interval=0.5)
        time.sleep(1.5)  # past --undelivered-after: no failure may have started meanwhile
        assert bridge.ready().status_code == 200, bridge.ready().text


def test_a_command_against_a_server_with_auth_on_names_the_missing_credentials(auth_server):
    """Without PREFECT_API_AUTH_STRING every command met a raw 401 traceback (`pools ls`) or
    'Client error 401 ... /admin/version' with no fix (`run`)."""
    api, auth, _ = auth_server
    planflow = str(Path(sys.executable).with_name("planflow"))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_AUTH_STRING"}
    env.update(PREFECT_API_URL=api, COLUMNS="200")
    refused = subprocess.run([planflow, "pools", "ls"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert f"the Prefect server at {api} has API auth on" in refused.stderr, refused.stderr[-2000:]
    assert "Fix: export PREFECT_API_AUTH_STRING=" in refused.stderr
    allowed = subprocess.run(
        [planflow, "pools", "ls"],
        env={**env, "PREFECT_API_AUTH_STRING": auth},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert allowed.returncode == 0 and "local" in allowed.stdout, allowed.stderr[-2000:]
    # `serve` too (it started, logged a raw 401 every 5 s, and its /readyz said the server was down)
    served = subprocess.run(
        [planflow, "serve", "no-such-pipeline", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert served.returncode == 1 and "Fix: export PREFECT_API_AUTH_STRING=" in served.stderr, served.stderr[-2000:]
    # `stack up` too, before any service starts (it started the exporter and the bridge
    # without credentials, then died on a raw 401 traceback)
    home = own_temp_folder("planflow-auth-stack-")
    stacked = subprocess.run(
        [planflow, "stack", "up", "--no-server", "--profile", "fast", "--bridge-port", str(free_port())],
        env={**env, "PLANFLOW_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stacked.returncode == 1 and "Fix: export PREFECT_API_AUTH_STRING=" in stacked.stderr, stacked.stderr[-2000:]
    assert "Traceback" not in stacked.stderr and not (home / "monitoring").exists(), stacked.stderr[-2000:]
    # `planflow env` (for `eval`) says on stderr that the shell needs the credentials too
    exports = subprocess.run([planflow, "env"], env=env, capture_output=True, text=True, timeout=120)
    assert exports.returncode == 0 and f"export PREFECT_API_URL={api}" in exports.stdout, exports.stderr
    assert "asks for credentials" in exports.stderr and "PREFECT_API_AUTH_STRING" in exports.stderr
    assert auth not in exports.stdout + exports.stderr
    sent = subprocess.run(
        [planflow, "env"], env={**env, "PREFECT_API_AUTH_STRING": auth}, capture_output=True, text=True, timeout=120
    )
    assert sent.returncode == 0 and "asks for credentials" not in sent.stderr, sent.stderr


def test_a_server_state_folder_left_readable_is_made_private(auth_server):
    _, _, paths = auth_server
    assert (paths.prefect_home / "prefect.db").exists()
    wrong = {}
    for folder, dirs, files in os.walk(paths.home):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            if path.is_symlink():
                continue
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                wrong[str(path.relative_to(paths.home))] = oct(mode)
    assert paths.home.stat().st_mode & 0o777 == 0o700
    assert wrong == {}, f"readable by others: {wrong}"


# -- a full disk ----------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (needs root: mount); unmounted afterwards."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        message = "mounting a small tmpfs needs root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True, timeout=30)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, timeout=30)


def test_a_full_disk_is_named_as_such(prefect_api_url, small_disk):
    state = small_disk / "state"
    with bridge_process(state, prefect_api_url, "--max-body-bytes", str(2 * 1024 * 1024)) as bridge:
        filler = small_disk / "filler"
        with filler.open("wb") as file:  # fill what is left of the disk
            try:
                while True:
                    file.write(b"\0" * 65536)
                    file.flush()
            except OSError:
                pass
        answer = None
        for i in range(20):  # until SQLite needs a new page
            alerts = [alert(fingerprint=f"full-{i}-{n}") for n in range(20)]
            for one in alerts:
                one["annotations"]["description"] = "d" * 4000
            answer = httpx.post(f"{bridge.url}/alerts", json=webhook(*alerts), headers=AUTH, timeout=30)
            if answer.status_code != 200:
                break
        assert answer is not None and answer.status_code == 507, answer.text if answer else None
        assert f"disk full at {state}" in answer.json()["error"], answer.text
        assert "cannot rollback" not in answer.text
