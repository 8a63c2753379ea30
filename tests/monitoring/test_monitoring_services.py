"""monitoring/services.py and the `stack` commands: idempotent, loopback, clear errors."""

from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

from planflow.cli.stack import stack_app
from planflow.ops import services
from planflow.settings import StatePaths


def test_up_is_idempotent_and_everything_listens_on_loopback(monitoring_stack):
    paths, started = monitoring_stack
    ports = json.loads(services.services_file(paths).read_text())["ports"]
    again = services.up(paths, profile="fast", ports=ports)
    assert {n: s.pid for n, s in again.items()} == {n: s.pid for n, s in started.items()}
    assert all(s.running and s.url.startswith("http://127.0.0.1:") for s in services.status(paths).values())
    rendered = services.rendered_config(paths, "alertmanager")
    credentials = rendered["receivers"][1]["webhook_configs"][0]["http_config"]["authorization"]
    assert credentials["credentials_file"].startswith(str(paths.home))
    token = httpx.get(f"{started['bridge'].url}/health").json()
    assert token["status"] == "ok"


def test_status_reports_stale_pid_files(tmp_path):
    paths = StatePaths(tmp_path)
    folder = services.monitoring_dir(paths)
    folder.mkdir(parents=True)
    (folder / "bridge.pid").write_text("999999")
    assert services.status(paths)["bridge"].state == "stale"
    assert services.status(paths)["prometheus"].state == "stopped"
    services.down(paths)
    assert not (folder / "bridge.pid").exists()


def test_a_missing_binary_is_an_error_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(services.ServicesError, match="apt-get install -y prometheus"):
        services.up(StatePaths(tmp_path), profile="fast")
    assert not (tmp_path / "monitoring" / "services.json").exists()


def test_stack_status_command_exits_3_when_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANFLOW_HOME", str(tmp_path))
    result = CliRunner().invoke(stack_app, ["status"])
    assert result.exit_code == 3
    assert "prometheus" in result.output and "stopped" in result.output
