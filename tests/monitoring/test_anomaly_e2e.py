"""End to end, fast profile: a component slowed on purpose, against its own baseline.

Each "run" records and pushes its component's figures with the run flow's own
RunRecorder to the real Pushgateway (what a pipeline run does at each component's start
and end; running whole pipelines only to produce these figures would take minutes).
Prometheus' recording rules learn the baseline, the anomaly rule fires, Alertmanager
delivers it to the bridge, and it reaches Prefect as an event; no remediation answers it.
"""

from __future__ import annotations

import itertools
import time
import uuid

import httpx

from planflow.monitoring.anomaly import ANOMALY_ALERTS, DEVIATION, MEDIAN
from planflow.monitoring.metrics import RunRecorder
from planflow.monitoring.rules import ALL_ALERTS
from planflow.monitoring.thresholds import load, seconds
from planflow.prefect.blocks.alert_route import FLOW_RUN_FAILED, default_route
from planflow.remediation import names
from planflow.remediation.automations import desired_automations

from tests.monitoring.helpers import read_events, wait_for

USUAL = (1.0, 1.1, 0.9, 1.05, 0.95)


def _query(prometheus: str, expr: str) -> list[dict]:
    return httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5).json()["data"]["result"]


def test_a_component_slowed_on_purpose_fires_the_anomaly_alert_as_a_prefect_event(monitoring_stack, prefect_api_url):
    paths, started = monitoring_stack
    prometheus, gateway = started["prometheus"].url, started["pushgateway"].url
    fast = load()["profiles"]["fast"]
    window = seconds(fast["anomaly_window"])
    pipeline = f"anomaly-e2e-{uuid.uuid4().hex[:8]}"
    recorder = RunRecorder(pipeline, pushgateway_url=gateway)
    usual = itertools.cycle(USUAL)

    def run(duration: float) -> None:
        """One run of the component as the run flow records it: started, then completed."""
        recorder.component("score", "local", "running", None, planned_seconds=1.0)
        recorder.component("score", "local", "completed", duration, planned_seconds=1.0)
        recorder.push()
        time.sleep(1.0)  # one scrape sees each run

    # the usual durations: a baseline several anomaly windows long, so that the slow runs
    # judged against it hardly move it before the alert fires
    for _ in range(4 * window):
        run(next(usual))
    key = f'{{pipeline="{pipeline}", component="score"}}'
    wait_for(lambda: _query(prometheus, MEDIAN + key), window + 10, "the baseline recording rule", interval=0.5)
    assert abs(float(_query(prometheus, MEDIAN + key)[0]["value"][1]) - 1.0) < 0.1

    def firing() -> list[dict]:
        run(3 * next(usual))  # the component is three times slower, run after run
        return [
            e
            for e in read_events(prefect_api_url, f"planflow.pipeline.{pipeline}")
            if e["event"] == "planflow.alert.firing"
        ]

    events = wait_for(firing, 4 * window + 30, "the anomaly alert as a Prefect event", interval=0)
    labels = events[0]["payload"]["labels"]
    assert labels["alertname"] == "PlanflowComponentDurationAnomaly", labels
    assert (labels["component"], labels["pool"], labels["severity"]) == ("score", "local", "info")
    # the deviation went past 3 spreads while the alert formed (now, more slow runs later,
    # the baseline may have taken some of them in: read the highest since the slow runs began)
    since = int(4 * window + 60)
    assert float(_query(prometheus, f"max_over_time({DEVIATION}{key}[{since}s])")[0]["value"][1]) > 3

    # notify only: no AlertRoute acts on it and no automation listens for it
    routes = {name: default_route(name) for name in [FLOW_RUN_FAILED, *(a.name for a in ALL_ALERTS)]}
    flows = (names.RETRY_FLOW, names.FAILOVER_FLOW, names.RESCALE_FLOW)
    automations = desired_automations({flow: uuid.uuid4() for flow in flows}, routes)
    text = " ".join(str(a.trigger.model_dump()) for a in automations)
    for alert in ANOMALY_ALERTS:
        assert default_route(alert.name).action == "none"
        assert alert.name not in text
