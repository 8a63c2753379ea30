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


def test_up_waits_for_a_live_service_that_does_not_answer_yet_instead_of_restarting_it(monitoring_stack):
    """A service whose process runs but whose health check is not answered (busy on a
    loaded machine, or still starting under another `stack up`) is given the timeout;
    `stack up` restarted it at the first missed check. Made real by stopping the
    Pushgateway's process (SIGSTOP) for 8 s."""
    import contextlib
    import os
    import signal
    import threading

    paths, started = monitoring_stack
    ports = json.loads(services.services_file(paths).read_text())["ports"]
    pid = services.status(paths)["pushgateway"].pid
    os.kill(pid, signal.SIGSTOP)
    resume = threading.Timer(8.0, os.kill, (pid, signal.SIGCONT))
    resume.start()
    try:
        assert services.status(paths)["pushgateway"].state == "unhealthy"
        again = services.up(paths, profile="fast", ports=ports, timeout=60)
    finally:
        resume.cancel()
        with contextlib.suppress(ProcessLookupError):  # (restarted: that process is gone)
            os.kill(pid, signal.SIGCONT)
    assert again["pushgateway"].running and again["pushgateway"].pid == pid, again["pushgateway"]


def _failure_rate_rule(prometheus_url: str) -> str:
    groups = httpx.get(f"{prometheus_url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    return next(r["query"] for g in groups for r in g["rules"] if r["name"] == "PlanflowPoolFailureRateHigh")


def test_up_on_a_running_stack_makes_prometheus_and_alertmanager_read_what_changed(monitoring_stack, monkeypatch):
    """`stack up` on a running stack rendered a project's new thresholds and a receiver from
    the environment, printed them, and left both services on what they read at their start."""
    import yaml

    from planflow.monitoring import thresholds

    paths, started = monitoring_stack
    ports = json.loads(services.services_file(paths).read_text())["ports"]
    own = paths.project / services.PROJECT_THRESHOLDS
    document = yaml.safe_load(thresholds.SOURCE.read_text())
    document["thresholds"]["failure_rate"] = 0.9
    hook = "http://127.0.0.1:9/planflow-reload-test"
    prometheus, alertmanager = started["prometheus"].url, started["alertmanager"].url
    assert "> 0.5" in _failure_rate_rule(prometheus)
    try:
        own.parent.mkdir(parents=True, exist_ok=True)
        own.write_text(yaml.safe_dump(document))
        monkeypatch.setenv("PLANFLOW_ALERT_WEBHOOK_URL", hook)
        again = services.up(paths, profile="fast", ports=ports)
        assert {n: s.pid for n, s in again.items()} == {n: s.pid for n, s in started.items()}  # not restarted
        assert again["prometheus"].detail == again["alertmanager"].detail == "re-read its changed configuration"
        assert not again["bridge"].detail
        assert "> 0.9" in _failure_rate_rule(prometheus)
        live = httpx.get(f"{alertmanager}/api/v2/status", auth=services.alertmanager_auth(paths), timeout=10).json()
        assert hook in live["config"]["original"]
        assert not services.up(paths, profile="fast", ports=ports)["prometheus"].detail  # unchanged: left alone
    finally:
        own.unlink(missing_ok=True)
        monkeypatch.delenv("PLANFLOW_ALERT_WEBHOOK_URL")
        services.up(paths, profile="fast", ports=ports)
        # the receiver it was given is kept for the stack's later renders (a demo's `up`
        # without it reverted the alerts to the placeholders, silently), until stack down
        kept = json.dumps(services.rendered_config(paths, "alertmanager")["receivers"])
        services.forget_kept_receivers(services.monitoring_dir(paths))  # (what stack down does)
        services.up(paths, profile="fast", ports=ports)  # the session's stack as it was
    assert hook in kept
    assert hook not in json.dumps(services.rendered_config(paths, "alertmanager")["receivers"])
    assert "> 0.5" in _failure_rate_rule(prometheus)


def test_status_reports_stale_pid_files(tmp_path):
    paths = StatePaths(tmp_path)
    folder = services.monitoring_dir(paths)
    folder.mkdir(parents=True)
    (folder / "bridge.pid").write_text("999999")
    stale = services.status(paths)["bridge"]
    assert stale.state == "stale", stale
    assert f"(it ended: why is in {folder / 'bridge.log'}). Fix: planflow stack up starts it again" in stale.detail
    assert services.status(paths)["prometheus"].state == "stopped"
    (folder / "receivers.json").write_text('{"webhook_url": "https://chat.example.com/hook"}')
    services.down(paths)
    assert not (folder / "bridge.pid").exists()
    assert not (folder / "receivers.json").exists()  # the stack's receivers end with it


def test_stack_up_names_the_receivers_it_keeps_from_an_earlier_environment(tmp_path, monkeypatch):
    """`stack up` says which receivers it still sends to from an earlier `up`'s environment
    (by variable: a webhook URL may hold a token), unless this environment sets them; it
    said nothing, and a shell without PLANFLOW_ALERT_WEBHOOK_URL still alerted that hook."""
    paths = StatePaths(tmp_path)
    folder = services.monitoring_dir(paths)
    folder.mkdir(parents=True)
    monkeypatch.delenv("PLANFLOW_ALERT_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("PLANFLOW_WATCHDOG_URL", raising=False)
    assert services.kept_receiver_variables(paths) == ([], folder / "receivers.json")
    hook = "https://chat.example.com/hooks/T0KEN"
    (folder / "receivers.json").write_text(
        json.dumps({"webhook_url": {"value": hook, "over": None}, "watchdog_url": {"value": hook, "over": None}})
    )
    assert services.kept_receiver_variables(paths)[0] == ["PLANFLOW_ALERT_WEBHOOK_URL", "PLANFLOW_WATCHDOG_URL"]
    monkeypatch.setenv("PLANFLOW_WATCHDOG_URL", hook)  # given again now: not an earlier one
    assert services.kept_receiver_variables(paths)[0] == ["PLANFLOW_ALERT_WEBHOOK_URL"]
    (folder / "receivers.json").write_text('[{"webhook_url": "x"}]')  # not planflow's: nothing said, no crash
    assert services.kept_receiver_variables(paths)[0] == []


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


def test_kept_receivers_give_way_to_an_edited_thresholds_file_and_bad_ones_are_dropped(tmp_path, monkeypatch, caplog):
    """The receivers a stack was started with are kept for its later renders, each with the
    thresholds.yml value it overrode: once the file says something else (the runbook's fix
    for a dead webhook), the file wins. A kept value that fails its variable's check (a
    file edited by hand) is dropped and said, never rendered into Alertmanager's config."""
    from planflow.ops.service_configs import KEPT_RECEIVERS, _kept_receivers

    placeholder = {"webhook_url": "https://alerts.example.invalid/planflow"}
    monkeypatch.setenv("PLANFLOW_ALERT_WEBHOOK_URL", "https://chat.example.com/hooks/old")
    assert _kept_receivers(tmp_path, placeholder) == {"webhook_url": "https://chat.example.com/hooks/old"}
    assert oct((tmp_path / KEPT_RECEIVERS).stat().st_mode & 0o777) == "0o600"
    monkeypatch.delenv("PLANFLOW_ALERT_WEBHOOK_URL")
    assert _kept_receivers(tmp_path, placeholder) == {"webhook_url": "https://chat.example.com/hooks/old"}  # kept
    edited = {"webhook_url": "https://chat.example.com/hooks/new"}  # thresholds.yml changed since
    assert _kept_receivers(tmp_path, edited) == {}
    assert not (tmp_path / KEPT_RECEIVERS).exists()

    broken = {"webhook_url": {"value": "not a url", "over": placeholder["webhook_url"]}, "bogus": {"value": "x"}}
    (tmp_path / KEPT_RECEIVERS).write_text(json.dumps(broken))
    assert _kept_receivers(tmp_path, placeholder) == {}
    assert "webhook_url='not a url': Value error, must be an http(s) URL" in caplog.text
