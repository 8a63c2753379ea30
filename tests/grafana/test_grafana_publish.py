"""Publishing: error messages against a fake Grafana (a local HTTP server that stands in
for one, since no Grafana can run here) and a closed port; create-then-update against a
fake that keeps what it receives; and the real thing when GRAFANA_URL is set."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from planflow.dashboards import publish as pub
from planflow.dashboards.build import UIDS
from planflow.ops.server import free_port


class FakeGrafana:
    """A loopback HTTP server answering a few Grafana API routes. `status` forces every
    answer (401, 403); otherwise it stores folders, datasources and dashboards by uid."""

    def __init__(self, status: int | None = None) -> None:
        self.status = status
        self.requests: list[tuple[str, str, Any, str | None]] = []
        self.datasources: dict[str, dict] = {}
        self.dashboards: dict[str, dict] = {}
        self.folders: dict[str, dict] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                fake.requests.append((self.command, self.path, body, self.headers.get("Authorization")))
                if fake.status == 401:
                    return self._answer(401, {"message": "Invalid API key"})
                if fake.status == 403:
                    return self._answer(403, {"message": "You'll need additional permissions"})
                code, answer = fake.route(self.command, self.path.split("?")[0], body)
                self._answer(code, answer)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        not_found = (404, {"message": "not found"})
        if path.startswith("/api/folders"):
            if method == "GET":
                uid = path.rsplit("/", 1)[-1]
                return (200, self.folders[uid]) if uid in self.folders else not_found
            self.folders[body["uid"]] = body
            return 200, body
        if path.startswith("/api/datasources/uid/"):
            uid = path.rsplit("/", 1)[-1]
            if method == "GET":
                return (200, self.datasources[uid]) if uid in self.datasources else not_found
            self.datasources[uid] = body
            return 200, {"message": "Datasource updated"}
        if path == "/api/datasources" and method == "POST":
            self.datasources[body["uid"]] = body
            return 200, {"message": "Datasource added"}
        if path == "/api/dashboards/db" and method == "POST":
            uid = body["dashboard"]["uid"]
            self.dashboards[uid] = body
            return 200, {"status": "success", "uid": uid, "url": f"/d/{uid}/x"}
        return not_found

    def __enter__(self) -> FakeGrafana:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_publish_to_a_fake_grafana_that_answers_401_says_the_token_was_refused():
    with FakeGrafana(status=401) as grafana:
        with pytest.raises(pub.GrafanaPublishError) as caught:
            pub.publish(grafana.url, "wrong-token", env={})
    message = str(caught.value)
    assert "refused the token" in message and "401" in message and grafana.url in message
    assert "GRAFANA_TOKEN" in message
    assert grafana.requests[0][0] == "GET"  # it stopped at the first answer


def test_publish_to_a_fake_grafana_that_answers_403_says_the_token_lacks_permission():
    with FakeGrafana(status=403) as grafana:
        with pytest.raises(pub.GrafanaPublishError, match=r"forbids .* \(403 Forbidden\)"):
            pub.publish(grafana.url, "viewer-token", env={})


def test_publish_to_a_closed_port_says_connection_refused_with_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(pub.GrafanaPublishError) as caught:
        pub.publish(url, "any", env={})
    assert f"cannot reach Grafana at {url}: connection refused" in str(caught.value)
    assert time.monotonic() - started < 10, "a refused connection must fail fast"


def test_publish_without_a_url_says_what_to_set():
    with pytest.raises(pub.GrafanaPublishError, match="set GRAFANA_URL"):
        pub.publish(None, None, env={})
    with pytest.raises(pub.GrafanaPublishError, match="not an http"):
        pub.publish("grafana.example:3000", "t", env={})


def test_publish_to_a_fake_grafana_creates_then_updates_idempotently():
    env = {"PLANFLOW_PROMETHEUS_URL": "http://prometheus.example:9090"}
    with FakeGrafana() as grafana:
        first = pub.publish(grafana.url, "token", env=env)
        second = pub.publish(grafana.url, "token", env=env)
    assert first.datasources == {"planflow-prometheus": "created", "planflow-alertmanager": "created"}
    assert second.datasources == {"planflow-prometheus": "updated", "planflow-alertmanager": "updated"}
    assert set(first.dashboards) == set(second.dashboards) == set(UIDS.values())
    assert grafana.datasources["planflow-prometheus"]["url"] == "http://prometheus.example:9090"
    assert grafana.datasources["planflow-alertmanager"]["url"] == "http://127.0.0.1:9093"  # default
    saved = grafana.dashboards["planflow-plan"]
    assert saved["overwrite"] is True and saved["folderUid"] == "planflow" and saved["dashboard"]["id"] is None
    assert list(grafana.folders) == ["planflow"]
    assert {auth for *_, auth in grafana.requests} == {"Bearer token"}


def test_datasource_urls_come_from_the_environment_with_loopback_defaults():
    sources = {s["uid"]: s for s in pub.load_datasources(env={})}
    assert sources["planflow-prometheus"]["url"] == "http://127.0.0.1:9090"
    assert sources["planflow-alertmanager"]["url"] == "http://127.0.0.1:9093"
    assert "editable" not in sources["planflow-prometheus"]  # provisioning-only key dropped
    moved = {s["uid"]: s for s in pub.load_datasources(env={"PLANFLOW_ALERTMANAGER_URL": "http://am:9093"})}
    assert moved["planflow-alertmanager"]["url"] == "http://am:9093"


def test_cli_publish_prints_the_error_and_exits_1():
    from typer.testing import CliRunner

    from planflow.cli.grafana import grafana_app

    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(grafana_app, ["publish", "--url", url, "--token", "t"])
    assert result.exit_code == 1
    assert f"cannot reach Grafana at {url}" in result.output


@pytest.mark.skipif(
    not os.environ.get("GRAFANA_URL"),
    reason="GRAFANA_URL (and GRAFANA_TOKEN) not set: no Grafana to publish to; none can run on these machines",
)
def test_publish_to_a_real_grafana_twice_and_read_the_dashboards_back():
    first = pub.publish()
    second = pub.publish()
    assert set(first.dashboards) == set(second.dashboards) == set(UIDS.values())
    assert set(second.datasources.values()) == {"updated"}
    api = pub.connect(os.environ["GRAFANA_URL"], os.environ.get("GRAFANA_TOKEN"))
    for uid in UIDS.values():
        assert api.dashboard.get_dashboard(uid)["dashboard"]["uid"] == uid
    assert api.datasource.get_datasource_by_uid("planflow-prometheus")["type"] == "prometheus"
