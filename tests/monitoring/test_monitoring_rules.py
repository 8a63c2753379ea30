"""monitoring/prometheus: generated files up to date, valid, and their unit tests pass."""

from __future__ import annotations

import re

import pytest
import yaml

from planflow.monitoring import rules as generate
from planflow.monitoring import thresholds
from planflow.monitoring.metrics import metric_catalog

from tests.monitoring.helpers import need_binary, promtool

HERE = generate.HERE


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


@pytest.mark.parametrize("profile", generate.PROFILES)
def test_promtool_rule_unit_tests_pass(profile):
    result = promtool("test", "rules", str(HERE / f"rules{generate.suffix(profile)}.test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("profile", generate.PROFILES)
def test_alertmanager_config_is_valid_and_routes_to_the_bridge(profile):
    import subprocess

    amtool = need_binary("amtool")
    path = HERE / f"alertmanager{generate.suffix(profile)}.yml"
    result = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    hook = config["receivers"][1]["webhook_configs"][0]
    assert hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["credentials_file"] == "bridge.token"
    result = subprocess.run(
        [amtool, "config", "routes", "test", "--config.file", str(path), "alertname=PlanflowBridgeDown"],
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == "planflow-bridge", result.stdout + result.stderr


def test_every_alert_is_documented_linked_and_uses_known_metrics():
    known = set(metric_catalog()) | {"up"}
    for profile in generate.PROFILES:
        rules = yaml.safe_load((HERE / f"rules{generate.suffix(profile)}.yml").read_text())
        for rule in rules["groups"][0]["rules"]:
            assert re.fullmatch(r"Planflow[A-Z][A-Za-z]+", rule["alert"])
            assert rule["labels"]["severity"] in {"critical", "warning"}
            notes = rule["annotations"]
            assert notes["summary"] and notes["description"]
            assert re.search(r"/d/planflow-(pipelines|plan|pools|alerts)$", notes["dashboard"])
            used = set(re.findall(r"\b(planflow_\w+|up)\b", rule["expr"]))
            assert used <= known, f"{rule['alert']} uses unknown metrics {used - known}"


def test_the_fast_and_production_profiles_differ_only_in_timing():
    fast = yaml.safe_load((HERE / "rules.fast.yml").read_text())["groups"][0]["rules"]
    prod = yaml.safe_load((HERE / "rules.yml").read_text())["groups"][0]["rules"]
    assert [r["alert"] for r in fast] == [r["alert"] for r in prod]
    assert {r["for"] for r in fast} == {"0s", "2s"}
    assert {r["for"] for r in prod} == {"0s", "5m"}


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
    document["schedule"] = "daily"
    path = tmp_path / "thresholds.yml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(thresholds.ThresholdsError) as caught:
        thresholds.load(path)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path} has 10 problems:"
    expected = [
        "ports: `bridge:` is 70000, but it must be a port number from 1 to 65535. Fix: e.g. `bridge: 9095`",
        "profiles.fast: `scrape_interval:` is missing; it must be a duration: a whole number > 0 and s, m or h. "
        "Fix: e.g. `scrape_interval: 15s`",
        "profiles.fast: `for:` is 2, but it must be a duration: a whole number > 0 and s, m or h. Fix: e.g. `for: 5m`",
        "profiles.fast: unknown field 'scrape'. Did you mean 'scrape_interval'? Fix: write `scrape_interval: '1s'`.",
        "profiles: unknown field 'prod'. Did you mean 'production'?",
        "thresholds: `failure_rate:` is 5, but it must be a share between 0 and 1 (failed / finished runs). "
        "Fix: e.g. `failure_rate: 0.5`",
        "thresholds: `overrun_factor:` is missing; it must be a number > 1 (times the planned duration). "
        "Fix: e.g. `overrun_factor: 2.0`",
        "thresholds: unknown field 'overrun'. Did you mean 'overrun_factor'? Fix: write `overrun_factor: 2.0`.",
        "the file: unknown field 'schedule' (value 'daily'). Fix: remove it. "
        "Allowed fields: grafana_url, ports, profiles, thresholds",
    ]
    for line in expected:
        assert any(found.startswith(f"  - {line}") for found in lines), line


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
    with pytest.raises(thresholds.ThresholdsError, match="the file must be a mapping of grafana_url, ports"):
        thresholds.load(path)
