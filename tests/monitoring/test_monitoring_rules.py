"""monitoring/prometheus: generated files up to date, valid, and their unit tests pass."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from planflow.monitoring import rules as generate
from planflow.monitoring import runbook, thresholds
from planflow.monitoring.alert_rule import REMEDIATION_FLOWS, REMEDIATION_POOL, AlertRule
from planflow.monitoring.meta_alerts import WATCHDOG
from planflow.monitoring.metrics import metric_catalog
from planflow.monitoring.routing import receivers_from_settings
from planflow.remediation import names
from planflow.settings import SettingsError

from tests.monitoring.helpers import need_binary, promtool

HERE = generate.HERE
RUNBOOK = Path(runbook.__file__).with_name("RUNBOOK.md")  # shipped; the repository's is a link to it


def test_committed_files_equal_the_generator_output():
    for path, text in generate.outputs().items():
        assert path.exists(), f"{path.name} missing. Fix: python -m planflow.monitoring.rules"
        assert path.read_text() == text, (
            f"{path.name} differs from thresholds.yml. Fix: python -m planflow.monitoring.rules"
        )


@pytest.mark.parametrize("profile", generate.PROFILES)
def test_promtool_checks_config_and_rules(profile):
    sfx = generate.suffix(profile)
    result = promtool("check", "config", str(HERE / f"prometheus{sfx}.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool("check", "rules", str(HERE / f"rules{sfx}.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def _split_rule_tests(path: Path, into: Path, parts: int) -> list[Path]:
    """The unit-test file `path` as `parts` files of its test groups (every group in exactly
    one), balanced by each group's last evaluation time: promtool evaluates every rule at
    every step up to it, so that is what a group costs."""
    document = yaml.safe_load(path.read_text())
    groups = document.pop("tests")
    document["rule_files"] = [str(path.parent / name) for name in document["rule_files"]]
    cost = [max(thresholds.seconds(case["eval_time"]) for case in group["alert_rule_test"]) for group in groups]
    chunks: list[list[dict]] = [[] for _ in range(parts)]
    totals = [0] * parts
    for index in sorted(range(len(groups)), key=lambda i: -cost[i]):
        least = totals.index(min(totals))
        chunks[least].append(groups[index])
        totals[least] += cost[index]
    assert sum(len(chunk) for chunk in chunks) == len(groups)
    files = []
    for n, chunk in enumerate(chunk for chunk in chunks if chunk):
        files.append(into / f"{path.stem}.{n}.yml")
        files[-1].write_text(yaml.safe_dump({**document, "tests": chunk}, sort_keys=False))
    return files


@pytest.mark.parametrize("profile", generate.PROFILES)
def test_promtool_rule_unit_tests_pass(profile, tmp_path):
    """Every scenario of the generated unit-test file, in two promtool processes at once
    (CI has two cores; the production anomaly scenarios alone take many seconds)."""
    path = HERE / f"rules{generate.suffix(profile)}.test.yml"
    binary = need_binary("promtool")
    runs = [
        subprocess.Popen(
            [binary, "test", "rules", str(part)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for part in _split_rule_tests(path, tmp_path, 2)
    ]
    try:
        outputs = [run.communicate(timeout=180)[0] for run in runs]
    finally:
        for run in runs:
            run.kill()  # none outlives the test (a no-op for a finished one)
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, f"{path.name} ({run.args[-1]}):\n{output}"


def test_a_failed_run_without_a_deployment_is_described_as_such(tmp_path):
    """The PlanflowPipelineRunFailed case of the generated tests, for a run not started
    from a deployment (a `planflow run`): Prometheus renders the description's else branch
    (it said "deployment '', work pool ''")."""
    path = HERE / "rules.fast.test.yml"
    document = yaml.safe_load(path.read_text())
    [case] = [t for t in document["tests"] if t["name"].startswith("PlanflowPipelineRunFailed ")]
    deployment = 'deployment="nightly",deployment_id="3f1c0d7e-0000-4000-8000-000000000001",'
    assert deployment in case["input_series"][0]["series"]
    case["input_series"] = [
        {**case["input_series"][0], "series": case["input_series"][0]["series"].replace(deployment, "")}
    ]
    firing = case["alert_rule_test"][0]["exp_alerts"][0]
    for label in ("deployment", "deployment_id"):
        del firing["exp_labels"][label]
    described = firing["exp_annotations"]["description"]
    firing["exp_annotations"]["description"] = described.replace(
        "(deployment 'nightly', work pool 'local')", "(not from a deployment)"
    )
    assert "(not from a deployment)" in firing["exp_annotations"]["description"]
    test_file = tmp_path / "no-deployment.test.yml"
    test_file.write_text(
        yaml.safe_dump({**document, "rule_files": [str(HERE / "rules.fast.yml")], "tests": [case]}, sort_keys=False)
    )
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_binary("amtool"), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("profile", generate.PROFILES)
def test_alertmanager_config_is_valid_and_routes_each_alert_by_what_it_needs(profile):
    path = HERE / f"alertmanager{generate.suffix(profile)}.yml"
    result = _amtool("check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 receivers" in result.stdout and "2 inhibit rules" in result.stdout, result.stdout
    config = yaml.safe_load(path.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    hook = receivers["planflow-bridge"]["webhook_configs"][0]
    assert hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["credentials_file"] == "bridge.token"
    assert config["route"]["receiver"] == "planflow-human", "the default route must reach a human"
    human = receivers["planflow-human"]
    assert human["webhook_configs"][0]["url"].startswith("https://") and human["email_configs"][0]["to"]

    def route(alert: AlertRule) -> str:
        found = _amtool("config", "routes", "test", "--config.file", str(path), f"alertname={alert.name}")
        return found.stdout.strip()

    for alert in generate.ALL_ALERTS:
        if alert.name == WATCHDOG:
            expected = "planflow-watchdog"  # never through the bridge, Prefect or the human route
        elif alert.to_bridge:
            expected = "planflow-bridge,planflow-human"
        else:
            expected = "planflow-human"  # the alerts about the alerting: never through the bridge
        assert route(alert) == expected, f"{alert.name} goes to {route(alert)!r}, not {expected!r}"


def test_the_watchdog_is_resent_to_the_dead_mans_switch_at_its_own_interval():
    for profile in generate.PROFILES:
        p = generate.params(profile)
        config = generate.alertmanager_config(p)
        watchdog = config["route"]["routes"][0]
        assert watchdog["matchers"] == [f'alertname="{WATCHDOG}"'] and "continue" not in watchdog
        assert watchdog["group_interval"] == p.raw["watchdog_interval"]
        # shorter than group_interval, so that every flush re-sends it
        assert thresholds.seconds(watchdog["repeat_interval"]) < thresholds.seconds(watchdog["group_interval"])
        rule = next(r for r in generate.rules(p)["groups"][0]["rules"] if r.get("alert") == WATCHDOG)
        assert (rule["expr"], rule["for"], rule["labels"]["severity"]) == ("vector(1)", "0s", "none")


def test_prefect_api_down_inhibits_the_pool_alerts_and_not_the_alerts_about_the_alerting():
    rules = generate.alertmanager_config(generate.params("production"))["inhibit_rules"]
    by_source = {r["source_matchers"][0]: r["target_matchers"][0] for r in rules}
    targets = by_source['alertname="PlanflowPrefectApiDown"']
    for name in ("PlanflowWorkPoolNotReady", "PlanflowLateRunBacklog", "PlanflowPoolFailureRateHigh"):
        assert name in targets
    for name in ("PlanflowBridgeDown", "PlanflowRemediationRunFailed", "PlanflowWatchdog"):
        assert name not in targets
    assert all("equal" not in r for r in rules)  # one Prefect per stack: no label to match on


def test_the_remediation_names_the_rules_exclude_are_the_remediations_own():
    assert REMEDIATION_POOL == names.REMEDIATION_POOL
    assert set(REMEDIATION_FLOWS) == {names.RETRY_FLOW, names.FAILOVER_FLOW, names.RESCALE_FLOW}
    rules = {r.get("alert"): r["expr"] for r in generate.rules(generate.params("fast"))["groups"][0]["rules"]}
    for name in ("PlanflowLateRunBacklog", "PlanflowWorkPoolNotReady", "PlanflowWorkerHeartbeatStale"):
        assert f'work_pool!="{REMEDIATION_POOL}"' in rules[name] and "work_pool_deployments == 0" in rules[name]
    assert rules["PlanflowPoolFailureRateHigh"].count(f'work_pool!="{REMEDIATION_POOL}"') == 3
    assert "planflow_prefect_remediation_runs_finished_total" in rules["PlanflowRemediationRunFailed"]


def test_receivers_come_from_the_environment_and_a_bad_one_names_its_variable(monkeypatch):
    p = generate.params("fast")
    assert receivers_from_settings(p) == p.receivers
    monkeypatch.setenv("PLANFLOW_ALERT_WEBHOOK_URL", "http://127.0.0.1:1/human")
    monkeypatch.setenv("PLANFLOW_WATCHDOG_URL", "http://127.0.0.1:1/watchdog")
    chosen = receivers_from_settings(p)
    config = generate.alertmanager_config(p, receivers=chosen)
    hooks = {r["name"]: r.get("webhook_configs", [{}])[0].get("url") for r in config["receivers"]}
    assert hooks["planflow-human"] == "http://127.0.0.1:1/human"
    assert hooks["planflow-watchdog"] == "http://127.0.0.1:1/watchdog"
    monkeypatch.setenv("PLANFLOW_ALERT_EMAIL_TO", "nobody")
    with pytest.raises(SettingsError) as caught:
        receivers_from_settings(p)
    assert "PLANFLOW_ALERT_EMAIL_TO='nobody': Value error, must be an e-mail address, e.g. oncall@" in str(caught.value)


def test_every_alert_is_documented_linked_and_uses_known_metrics():
    known = set(metric_catalog()) | {"up"}
    for profile in generate.PROFILES:
        rules = yaml.safe_load((HERE / f"rules{generate.suffix(profile)}.yml").read_text())
        for rule in rules["groups"][0]["rules"]:
            if "record" in rule:  # recording rules: level:metric:operations, known inputs
                assert re.fullmatch(r"planflow:[a-z_]+:[a-z_]+", rule["record"]), rule["record"]
                used = set(re.findall(r"\b(planflow_\w+)\b", rule["expr"]))
                assert used <= known, f"{rule['record']} uses unknown metrics {used - known}"
                continue
            assert re.fullmatch(r"Planflow[A-Z][A-Za-z]+", rule["alert"])
            assert rule["labels"]["severity"] in {"critical", "warning", "info", "none"}
            notes = rule["annotations"]
            assert notes["summary"] and notes["description"]
            assert re.search(r"/d/planflow-(pipelines|plan|pools|alerts)$", notes["dashboard"])
            assert notes["runbook_url"] == f"monitoring/RUNBOOK.md#{rule['alert'].lower()}"
            assert notes["runbook"] == f"planflow runbook {rule['alert']}"
            assert runbook.section(rule["alert"]).startswith(f"## {rule['alert']}\n")
            used = set(re.findall(r"\b(planflow_\w+|up)\b", rule["expr"]))
            assert used <= known, f"{rule['alert']} uses unknown metrics {used - known}"


def test_every_alert_has_a_runbook_section_saying_what_it_means_what_to_check_and_do():
    text = RUNBOOK.read_text()
    sections = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S))
    for alert in generate.ALL_ALERTS:
        assert alert.name in sections, f"monitoring/RUNBOOK.md has no section `## {alert.name}`"
        for part in ("**What it means**", "**What to check**", "**What to do**"):
            assert part in sections[alert.name], f"RUNBOOK.md, {alert.name}: no {part}"
        assert f"Severity: {alert.severity}" in sections[alert.name], f"RUNBOOK.md, {alert.name}: severity"
    assert set(sections) <= {a.name for a in generate.ALL_ALERTS}, "a runbook section names no alert"


def test_the_fast_and_production_profiles_differ_only_in_timing():
    fast = yaml.safe_load((HERE / "rules.fast.yml").read_text())["groups"][0]["rules"]
    prod = yaml.safe_load((HERE / "rules.yml").read_text())["groups"][0]["rules"]
    assert [r.get("alert", r.get("record")) for r in fast] == [r.get("alert", r.get("record")) for r in prod]
    assert {r["for"] for r in fast if "alert" in r} == {"0s", "2s"}
    assert {r["for"] for r in prod if "alert" in r} == {"0s", "5m"}


def _shipped() -> dict:
    return yaml.safe_load(thresholds.SOURCE.read_text())


def test_a_bad_thresholds_file_lists_every_problem_with_the_value_and_the_fix(tmp_path):
    document = _shipped()
    fast = document["profiles"]["fast"]
    fast["scrape"] = fast.pop("scrape_interval")
    fast["for"] = 2
    document["profiles"]["prod"] = document["profiles"].pop("production")
    document["thresholds"]["failure_rate"] = 5
    document["thresholds"]["overrun"] = document["thresholds"].pop("overrun_factor")
    document["ports"]["bridge"] = 70000
    document["thresholds"]["serving_error_ratio"] = -5  # a field without words of its own: pydantic's, and its default
    document["schedule"] = "daily"
    path = tmp_path / "thresholds.yml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(thresholds.ThresholdsError) as caught:
        thresholds.load(path)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path} has 11 problems:"
    expected = [
        "ports: `bridge:` is 70000, but it must be a port number from 1 to 65535. Fix: e.g. `bridge: 9095`",
        "profiles.fast: `scrape_interval:` is missing; it must be a duration: a whole number > 0 and s, m, h or d. "
        "Fix: e.g. `scrape_interval: 15s`",
        "profiles.fast: `for:` is 2, but it must be a duration: a whole number > 0 and s, m, h or d. "
        "Fix: e.g. `for: 5m`",
        "profiles.fast: unknown field 'scrape'. Did you mean 'scrape_interval'? Fix: write `scrape_interval: '1s'`.",
        "profiles: unknown field 'prod'. Did you mean 'production'?",
        "thresholds: `failure_rate:` is 5, but it must be a share between 0 and 1 (failed / finished runs). "
        "Fix: e.g. `failure_rate: 0.5`",
        "thresholds: `overrun_factor:` is missing; it must be a number > 1 (times the planned duration). "
        "Fix: e.g. `overrun_factor: 2.0`",
        "thresholds: unknown field 'overrun'. Did you mean 'overrun_factor'? Fix: write `overrun_factor: 2.0`.",
        "thresholds: `serving_error_ratio:` is -5, but it must be greater than 0. "
        "Fix: e.g. `serving_error_ratio: 0.01`",
        "the file: unknown field 'schedule' (value 'daily'). Fix: remove it. "
        "Allowed fields: grafana_url, runbook_url, receivers, ports, profiles, thresholds",
    ]
    for line in expected:
        assert any(found.startswith(f"  - {line}") for found in lines), line


def test_a_few_overrides_instead_of_a_whole_copy_are_told_how_to_start_one(tmp_path):
    """A project's file holding one threshold at the top: not 'remove it', but where it
    belongs and how to start the whole file."""
    path = tmp_path / "thresholds.yml"
    path.write_text("serving_error_ratio: 0.02\nwatchdog_interval: 1m\n")
    with pytest.raises(thresholds.ThresholdsError) as caught:
        thresholds.load(path)
    lines = str(caught.value).splitlines()
    assert lines[1].startswith(
        "  - the file lacks grafana_url, runbook_url, receivers, ports, profiles, thresholds: it is a whole copy "
        "of planflow's thresholds, edited, not a few overrides. Fix: `python -c"
    )
    assert (
        "  - the file: unknown field 'serving_error_ratio' here; it belongs under `thresholds:`. Fix: move it there"
        in lines
    )
    assert (
        "  - the file: unknown field 'watchdog_interval' here; it belongs under `profiles.fast:`. Fix: move it there"
        in lines
    )
    assert not [line for line in lines if "remove it" in line]


def test_the_ports_a_stack_picks_are_checked_like_the_file():
    source = generate.load()
    source["ports"] = {**source["ports"], "exporter": "nine"}
    with pytest.raises(thresholds.ThresholdsError, match="ports: `exporter:` is 'nine', but it must be a port number"):
        generate.params("fast", source)
    source["ports"]["exporter"] = 19096
    assert generate.params("fast", source).ports["exporter"] == 19096


def test_a_thresholds_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "thresholds.yml"
    path.write_text("- 1\n")
    expected = "the file must be a mapping of grafana_url, runbook_url, receivers, ports"
    with pytest.raises(thresholds.ThresholdsError, match=expected):
        thresholds.load(path)


def test_a_thresholds_file_from_before_the_anomaly_rules_still_loads_with_their_defaults():
    document = _shipped()
    for key in [k for k in document["thresholds"] if "anomaly" in k]:
        del document["thresholds"][key]
    for profile in document["profiles"].values():
        del profile["anomaly_window"], profile["anomaly_baseline_window"]
    checked = thresholds.validate(document)
    assert (checked.thresholds.anomaly_runs, checked.profiles.fast.anomaly_window) == (3, "6h")
    document["thresholds"]["anomaly_runs"] = 0
    with pytest.raises(thresholds.ThresholdsError, match=r"`anomaly_runs:` is 0, .* Fix: e.g. `anomaly_runs: 3`"):
        thresholds.validate(document)
