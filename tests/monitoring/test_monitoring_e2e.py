"""End to end, fast profile: a failing flow run on the Prefect server -> exporter metric
-> Prometheus alert -> Alertmanager -> bridge -> a Prefect event; then resolved."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.monitoring.helpers import read_events, stack_targets_up, wait_for


def test_a_failed_run_becomes_a_firing_then_resolved_prefect_event(monitoring_stack, prefect_api_url):
    from prefect import flow

    paths, started = monitoring_stack
    prometheus = started["prometheus"].url
    wait_for(lambda: stack_targets_up(prometheus), 30, "every scrape target up")

    name = f"e2e-boom-{uuid.uuid4().hex[:8]}"

    @flow(name=name, persist_result=False)
    def boom() -> None:
        raise RuntimeError("planned failure for the monitoring test")

    with pytest.raises(RuntimeError):
        boom()

    query = f'planflow_prefect_flow_runs_finished_total{{flow="{name}",state="failed"}}'
    wait_for(
        lambda: httpx.get(f"{prometheus}/api/v1/query", params={"query": query}).json()["data"]["result"],
        30,
        "the exporter's failure metric in Prometheus",
        interval=0.5,
    )

    firing = wait_for(
        lambda: [
            e
            for e in read_events(prefect_api_url, f"planflow.pipeline.{name}")
            if e["event"] == "planflow.alert.firing"
        ],
        60,
        "firing event",
        interval=0.5,
    )
    event = firing[0]
    assert event["payload"]["labels"]["alertname"] == "PlanflowPipelineRunFailed"
    assert event["payload"]["labels"]["flow"] == name
    assert event["payload"]["annotations"]["dashboard"].endswith("/d/planflow-pipelines")
    assert event["resource"]["prefect.resource.id"] == f"planflow.pipeline.{name}"
    assert f"prefect.flow.{name}" in {r["prefect.resource.id"] for r in event["related"]}

    # nothing fails any more: the alert resolves once the failure window has passed
    resolved = wait_for(
        lambda: [
            e
            for e in read_events(prefect_api_url, f"planflow.pipeline.{name}")
            if e["event"] == "planflow.alert.resolved"
        ],
        90,
        "resolved event",
        interval=1.0,
    )
    assert resolved[0]["payload"]["fingerprint"] == event["payload"]["fingerprint"]
    firing_now = [
        e for e in read_events(prefect_api_url, f"planflow.pipeline.{name}") if e["event"] == "planflow.alert.firing"
    ]
    assert len(firing_now) == 1
