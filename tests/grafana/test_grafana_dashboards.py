"""The dashboards, offline: generated JSON is committed and current, valid against
Grafana's dashboard schema, every query parses and reads metrics planflow exposes, and
every alert rule links to a dashboard that exists."""

from __future__ import annotations

import copy
import json
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

from planflow.dashboards import generate, queries
from planflow.dashboards.build import ALERTMANAGER_UID, PROMETHEUS_UID, UIDS, build_all
from planflow.monitoring import rules as rules_module

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((files("planflow.dashboards") / "schema" / "dashboard.schema.json").read_text())
RULES_DIR = rules_module.HERE
MODELS = build_all()
EXPECTED_UIDS = {"planflow-pipelines", "planflow-plan", "planflow-pools", "planflow-alerts"}


@pytest.fixture(scope="module")
def known() -> dict[str, str]:
    return queries.known_metrics()


def test_the_four_dashboards_have_the_fixed_uids_the_alerts_link_to():
    assert set(MODELS) == EXPECTED_UIDS == set(UIDS.values())
    assert all(model["uid"] == uid for uid, model in MODELS.items())


def test_committed_json_equals_what_the_code_generates():
    assert generate.stale_files(ROOT / "grafana") == [], "Fix: planflow grafana generate"
    for uid, model in MODELS.items():
        assert json.loads((ROOT / "grafana" / "dashboards" / f"{uid}.json").read_text()) == model


@pytest.mark.parametrize("uid", sorted(EXPECTED_UIDS))
def test_dashboard_validates_against_grafanas_dashboard_schema(uid):
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(MODELS[uid])
    ]
    assert errors == []


def test_the_schema_rejects_what_grafana_would_reject():
    bad = copy.deepcopy(MODELS["planflow-plan"])
    bad["panels"][1]["gridPos"]["w"] = 30  # wider than the 24-column grid
    bad["templating"]["list"][0]["refresh"] = 7  # not a VariableRefresh
    bad["bogus"] = True  # unknown top-level key
    messages = [e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(bad)]
    assert len(messages) == 3, messages


@pytest.mark.parametrize("uid", sorted(EXPECTED_UIDS))
def test_every_query_parses_and_reads_only_metrics_planflow_exposes(uid, known):
    assert queries.check_dashboard(MODELS[uid], known) == []


def test_known_metrics_come_from_the_real_registries_not_a_list(known):
    from planflow.monitoring.metrics import metric_catalog

    # every declared metric is known, and the histogram/counter series names are derived
    assert set(metric_catalog()) <= set(known)
    assert {
        "planflow_component_duration_seconds_bucket",
        "planflow_remediations_total",
        "planflow_prefect_late_runs",
        "planflow_bridge_spool_depth",
        "up",
        "ALERTS",
    } <= set(known)
    assert "planflow_component_duration_seconds" not in known  # a histogram has no bare series


def test_an_unknown_metric_or_a_broken_query_is_reported_with_its_panel(known):
    bad = copy.deepcopy(MODELS["planflow-plan"])
    panel = next(p for p in bad["panels"] if p.get("targets"))
    panel["targets"][0]["expr"] = "planflow_no_such_metric_seconds"
    panel["targets"].append({"refId": "Z", "expr": "sum(rate(planflow_plan_gap_ratio[1m]"})
    problems = queries.check_dashboard(bad, known)
    assert any("unknown metric 'planflow_no_such_metric_seconds'" in p and panel["title"] in p for p in problems), (
        problems
    )
    assert any("does not parse as PromQL" in p and "/ Z:" in p for p in problems), problems


def test_every_panel_query_reads_the_provisioned_prometheus():
    for model in MODELS.values():
        for panel in queries.panels(model):
            if panel.get("type") in ("row", "text"):
                continue
            assert panel.get("datasource", {}).get("uid") == PROMETHEUS_UID, panel["title"]
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == PROMETHEUS_UID
                assert target["refId"], panel["title"]


def test_template_variables_for_pipeline_and_pool_use_label_values():
    names = {uid: queries.variables(model) for uid, model in MODELS.items()}
    assert "pipeline" in names["planflow-pipelines"] and "pipeline" in names["planflow-plan"]
    assert {"pool", "work_pool"} <= set(names["planflow-pools"])
    for model in MODELS.values():
        for var in model["templating"].get("list", []):
            assert var["query"].startswith("label_values("), var
            assert var["datasource"]["uid"] == PROMETHEUS_UID
        used = " ".join(q.expr for q in queries.panel_queries(model))
        for name in queries.variables(model):
            assert f"${name}" in used, f"{model['uid']}: variable ${name} filters nothing"


def test_panel_ids_are_unique_and_panels_fit_the_grid():
    for model in MODELS.values():
        ids = [p["id"] for p in queries.panels(model)]
        assert len(ids) == len(set(ids)), model["uid"]
        for panel in queries.panels(model):
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, (model["uid"], panel.get("title"))


@pytest.mark.parametrize("rules", ["rules.yml", "rules.fast.yml"])
def test_every_alert_rule_links_to_an_existing_dashboard(rules):
    document = yaml.safe_load((RULES_DIR / rules).read_text())
    alerts = [r for g in document["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    committed = {p.stem for p in (ROOT / "grafana" / "dashboards").glob("*.json")}
    for rule in alerts:
        link = rule["annotations"]["dashboard"]
        uid = link.rstrip("/").rsplit("/d/", 1)[-1].split("?")[0]
        assert uid in MODELS and uid in committed, f"{rule['alert']}: {link} names no dashboard"


def test_provisioning_files_name_the_datasource_uids_and_the_dashboards_folder():
    datasources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/planflow.yaml").read_text())
    by_uid = {d["uid"]: d for d in datasources["datasources"]}
    assert by_uid[PROMETHEUS_UID]["type"] == "prometheus"
    assert by_uid[ALERTMANAGER_UID]["type"] == "alertmanager"
    providers = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/planflow.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_generate_writes_a_project_folder_and_check_names_a_stale_file(tmp_path, capsys):
    out = tmp_path / "grafana"
    assert generate.main(["--check", "--out", str(out)]) == 1  # an empty project: all missing
    assert generate.main(["--out", str(out)]) == 0
    assert (out / "provisioning" / "datasources" / "planflow.yaml").is_file()
    assert generate.main(["--check", "--out", str(out)]) == 0
    (out / "dashboards" / "planflow-plan.json").write_text("{}")
    assert generate.main(["--check", "--out", str(out)]) == 1
    assert "planflow-plan.json" in capsys.readouterr().err
    generate.main(["--out", str(out)])
    assert generate.main(["--check", "--out", str(out)]) == 0
