"""Every Grafana panel query, run against the real Prometheus of the monitoring stack
after a demo-like run (fast profile). No Grafana can run here, so this runs what Grafana
would send: each target's PromQL, template variables replaced by real values, through
Prometheus' /api/v1/query.

It lives beside the monitoring tests to share their session-wide stack.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from planflow import to_flow
from planflow.dashboards import queries
from planflow.dashboards.build import build_all

from tests.monitoring.helpers import stack_targets_up, wait_for

PIPELINE = "image-classification"
# Panels that may legitimately be empty right after the run, and why.
MAY_BE_EMPTY = {
    (
        "planflow-pipelines",
        "Component failures and retries (latest run)",
    ): "the run's components all succeed; a failure counter gets its series at the first failure",
    (
        "planflow-alerts",
        "Remediations, by action and outcome",
    ): "no remediation flow has run (nothing increments planflow_remediations_total yet)",
    (
        "planflow-alerts",
        "Remediations in the time range",
    ): "no remediation flow has run (nothing increments planflow_remediations_total yet)",
    (
        "planflow-alerts",
        "Trigger -> remediation flow running (s), by action",
    ): "no remediation flow has run (each one pushes planflow_remediation_alert_latency_seconds)",
    ("planflow-alerts", "Webhook requests rejected, by reason"): "only after the bridge refused a request",
    (
        "planflow-pipelines",
        "Component duration against its baseline",
    ): "a baseline needs anomaly_min_history_runs runs (test_anomaly_e2e.py queries it for real)",
    (
        "planflow-pipelines",
        "Failed share of runs, recent against usual",
    ): "a ratio needs runs finishing in both windows after the exporter's counter exists",
    (
        "planflow-pipelines",
        "annotation: Anomalies",
    ): "no anomaly alert fires for this pipeline (test_anomaly_e2e.py makes one fire)",
    **{
        ("planflow-pipelines", panel): "no pipeline is served here (tests/serving/ read a real replica's /metrics)"
        for panel in (
            "/predict latency p50 / p99",
            "Requests and errors per second",
            "Replicas with a model",
            "Model version (its run ended)",
            "Model loads failing",
        )
    },
}


def _query(prometheus: str, expr: str) -> dict:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]


def _has(prometheus: str, expr: str) -> bool:
    return bool(_query(prometheus, expr)["result"])


@pytest.fixture
def demo_world(monitoring_stack, registered_blocks, monkeypatch):
    """A pipeline run that pushes its figures, a work pool with a worker heartbeat, a
    deployment of the pipeline's flow on it with a scheduled run (queue depth) and a
    failed run (failure panels, a firing alert, the bridge forwarding it)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Failed

    from planflow.core import discovery as registry

    paths, started = monitoring_stack
    prometheus = started["prometheus"].url
    wait_for(lambda: stack_targets_up(prometheus), 30, "every scrape target up")
    monkeypatch.setenv("PLANFLOW_PUSHGATEWAY_URL", started["pushgateway"].url)
    to_flow(registry.get(PIPELINE))(**{"augment": 0, "test_size": 0.5})

    work_pool = f"grafana-e2e-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=work_pool, type="process"), overwrite=True)
        client._client.post(
            f"/work_pools/{work_pool}/workers/heartbeat",
            json={"name": "grafana-e2e-worker", "heartbeat_interval_seconds": 30},
        )
        flow_id = client.create_flow_from_name(PIPELINE)
        deployment_id = client.create_deployment(flow_id=flow_id, name="grafana-e2e", work_pool_name=work_pool)
        waiting = client.create_flow_run_from_deployment(deployment_id)
        failed = client.create_flow_run_from_deployment(deployment_id)
        client.set_flow_run_state(failed.id, Failed(message="failed on purpose for the dashboards"), force=True)
    try:
        yield prometheus, work_pool
    finally:
        with get_client(sync_client=True) as client:
            for run in (waiting, failed):
                client.delete_flow_run(run.id)
            client.delete_deployment(deployment_id)
            client.delete_work_pool(work_pool)


def test_every_panel_query_returns_data_from_the_real_prometheus(demo_world):
    prometheus, work_pool = demo_world
    # what the panels show must have arrived: pushed run figures, the exporter's view,
    # the alert on the failed run, and the bridge having received it
    for expr in (
        f'planflow_pipeline_makespan_seconds{{pipeline="{PIPELINE}"}}',
        f'planflow_prefect_flow_runs{{work_pool="{work_pool}", state="scheduled"}}',
        f'planflow_prefect_flow_runs_finished_total{{work_pool="{work_pool}", state="failed"}}',
        f'planflow_prefect_worker_heartbeat_age_seconds{{work_pool="{work_pool}"}}',
        f'ALERTS{{alertname="PlanflowPipelineRunFailed", alertstate="firing", flow="{PIPELINE}"}}',
        'planflow_bridge_alerts_received_total{status="firing"}',
        # a rate panel needs two samples of the counter in its window, not one (CI: empty)
        f'increase(planflow_prefect_flow_runs_finished_total{{flow="{PIPELINE}"}}[1m])',
    ):
        wait_for(lambda expr=expr: _has(prometheus, expr), 60, expr, interval=0.5)

    pools = {s["pool"] for s in _query(prometheus, "planflow_pool_capacity")["result"] for s in [s["metric"]]}
    values = {"pipeline": PIPELINE, "pool": sorted(pools)[0], "work_pool": work_pool}

    empty, checked = [], 0
    for uid, model in build_all().items():
        for query in queries.variable_queries(model):
            # label_values(selector, label): the selector's series carry that label
            series = _query(prometheus, query.expr)["result"]
            assert any(query.ref_id in s["metric"] for s in series), (query.where, query.expr)
        for query in queries.panel_queries(model):
            expr = queries.render(query.expr, values)
            result = _query(prometheus, expr)["result"]
            checked += 1
            if not result and (uid, query.panel) not in MAY_BE_EMPTY:
                empty.append(f"{query.where}: {expr}")
    assert checked >= 50
    assert empty == [], "panels without data:\n" + "\n".join(empty)
