"""monitoring/prometheus: generated files up to date, valid, and their unit tests pass."""

from __future__ import annotations

import re

import pytest
import yaml

from planflow.monitoring import rules as generate
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
