"""The alerts about the alerting, on the real stack (fast profile), with a Prefect server
of its own: the Watchdog reaches a dead man's switch and stops when Alertmanager dies;
killing the bridge or the Pushgateway reaches a human receiver without the bridge; the
real Alertmanager holds pool alerts back while the Prefect API is down; a pool nobody
runs, and the remediation's own pool, are not alerted on.

The receivers are one tiny HTTP server the test starts (`/human`, `/watchdog`), given to
the stack through PLANFLOW_ALERT_WEBHOOK_URL and PLANFLOW_WATCHDOG_URL."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate

from planflow.monitoring.rules import ALL_ALERTS
from planflow.monitoring.thresholds import params, seconds
from planflow.ops import server as stack
from planflow.ops import services
from planflow.settings import StatePaths

from tests.conftest import own_temp_folder
from tests.monitoring.helpers import free_port, need_binary, stack_targets_up, wait_for

WATCHDOG_INTERVAL = seconds(params("fast").raw["watchdog_interval"])


class Receiver:
    """Records every webhook POST: (path, arrival time, body)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, float, dict[str, Any]]] = []
        lock, posts = threading.Lock(), self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    posts.append((self.path, time.time(), json.loads(body or b"{}")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def alerts(self, path: str, alertname: str, status: str | None = None, after: float = 0.0) -> list[dict]:
        """The alerts named `alertname` posted to `path` after `after`, each with `received`."""
        return [
            {**a, "received": at}
            for where, at, body in list(self.posts)
            if where == path and at > after
            for a in body.get("alerts", [])
            if a["labels"].get("alertname") == alertname and status in (None, a["status"])
        ]


@dataclass
class Stack:
    paths: StatePaths
    ports: dict[str, int]
    api: str
    receiver: Receiver
    prefect_port: int

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def restart(self) -> None:
        """Start again whatever a test stopped (`services.up` keeps what runs)."""
        services.up(self.paths, profile="fast", ports=self.ports)

    def firing_in_prometheus(self, alertname: str, **labels: str) -> list[dict]:
        match = "".join(f',{k}="{v}"' for k, v in labels.items())
        query = f'ALERTS{{alertname="{alertname}",alertstate="firing"{match}}}'
        answer = httpx.get(f"{self.url('prometheus')}/api/v1/query", params={"query": query}, timeout=10)
        return answer.json()["data"]["result"]


@pytest.fixture(scope="module")
def alerting():
    for binary in (("prometheus",), ("prometheus-alertmanager", "alertmanager"), ("prometheus-pushgateway",)):
        need_binary(*binary)
    paths = StatePaths(own_temp_folder("planflow-alerting-"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    receiver = Receiver()
    receiver.thread.start()
    ports = {name: free_port() for name in services.ORDER}
    with pytest.MonkeyPatch.context() as env:
        # the stack watches its own Prefect server and sends to this test's receivers
        env.setenv("PREFECT_API_URL", api)
        env.setenv("PLANFLOW_ALERT_WEBHOOK_URL", f"{receiver.url}/human")
        env.setenv("PLANFLOW_WATCHDOG_URL", f"{receiver.url}/watchdog")
        try:
            stack.up(paths, port=port)
            services.up(paths, profile="fast", ports=ports)
            ready = Stack(paths, ports, api, receiver, port)
            wait_for(
                lambda: stack_targets_up(ready.url("prometheus"), len(services.ORDER)), 90, "every scrape target up"
            )
            yield ready
        finally:
            services.down(paths)
            stack.down(paths)
            receiver.server.shutdown()


async def _pools_and_deployments(api: str, tag: str) -> dict[str, str]:
    pools = {"unused": f"unused-{tag}", "waiting": f"waiting-{tag}", "remediation": "planflow-remediation"}
    async with PrefectClient(api) as client:
        for name in pools.values():
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"), overwrite=True)
        flow_id = await client.create_flow_from_name(f"alerting-test-{tag}")
        for key in ("waiting", "remediation"):  # deployments, and no worker: both not ready
            await client.create_deployment(flow_id=flow_id, name=f"on-{key}", work_pool_name=pools[key])
    return pools


def test_a_pool_nobody_runs_and_the_remediation_pool_never_alert_a_used_pool_does(alerting):
    pools = asyncio.run(_pools_and_deployments(alerting.api, uuid.uuid4().hex[:8]))
    wait_for(
        lambda: alerting.firing_in_prometheus("PlanflowWorkPoolNotReady", work_pool=pools["waiting"]),
        60,
        "PlanflowWorkPoolNotReady for the pool with a deployment and no worker",
        interval=0.5,
    )
    query = f"{alerting.url('prometheus')}/api/v1/query"
    for key in ("unused", "remediation"):
        status = f'planflow_prefect_work_pool_status{{work_pool="{pools[key]}",status="not_ready"}}'
        seen = httpx.get(query, params={"query": status}).json()["data"]["result"]
        assert seen and seen[0]["value"][1] == "1", f"{pools[key]} should be not ready, and watched: {seen}"
        assert not alerting.firing_in_prometheus("PlanflowWorkPoolNotReady", work_pool=pools[key])
    deployments = f'planflow_prefect_work_pool_deployments{{work_pool="{pools["unused"]}"}}'
    assert httpx.get(query, params={"query": deployments}).json()["data"]["result"][0]["value"][1] == "0"


def _am_alert(minutes: float, **labels: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "labels": {"job": "inhibition-test", **labels},
        "annotations": {"summary": "posted by the inhibition test"},
        "startsAt": (now - timedelta(seconds=5)).isoformat(),
        "endsAt": (now + timedelta(minutes=minutes)).isoformat(),
    }


def test_the_real_alertmanager_holds_pool_alerts_back_while_prefect_is_down(alerting):
    am = f"{alerting.url('alertmanager')}/api/v2/alerts"
    auth = services.alertmanager_auth(alerting.paths)  # Alertmanager's API asks for the stack's password

    def states() -> dict[str, dict]:
        found = httpx.get(am, params={"filter": 'job="inhibition-test"'}, timeout=10, auth=auth).json()
        return {a["labels"]["alertname"]: a["status"] for a in found}

    pool = f"inhibited-{uuid.uuid4().hex[:8]}"
    target = _am_alert(5, alertname="PlanflowBridgeForwardFailing", severity="warning")
    source = _am_alert(5, alertname="PlanflowPrefectApiDown", severity="critical")
    pool_alert = _am_alert(5, alertname="PlanflowWorkPoolNotReady", severity="warning", work_pool=pool)
    # routed like the pool alert, and not inhibited: it shows when the pool alert would have arrived
    control = _am_alert(5, alertname="PlanflowPipelinePlanSlip", severity="warning", pipeline=pool)
    try:
        httpx.post(am, json=[target], timeout=10, auth=auth).raise_for_status()
        alone = wait_for(lambda: states().get("PlanflowBridgeForwardFailing"), 30, "the target alert")
        assert alone["state"] == "active" and not alone["inhibitedBy"], alone

        # the cause first, as in an outage: then what it causes arrives
        httpx.post(am, json=[source], timeout=10, auth=auth).raise_for_status()
        wait_for(lambda: states()["PlanflowBridgeForwardFailing"]["inhibitedBy"], 30, "the inhibition in effect")
        httpx.post(am, json=[pool_alert, control], timeout=10, auth=auth).raise_for_status()
        held = wait_for(lambda: (lambda s: s if len(s) == 4 else None)(states()), 30, "the pool alert")
        assert held["PlanflowPrefectApiDown"]["state"] == "active"
        for name in ("PlanflowWorkPoolNotReady", "PlanflowBridgeForwardFailing"):
            assert held[name]["state"] == "suppressed" and held[name]["inhibitedBy"], held[name]
        assert held["PlanflowPipelinePlanSlip"]["state"] == "active"
        # the cause reaches a human, straight from Alertmanager; the pool alert does not
        wait_for(lambda: alerting.receiver.alerts("/human", "PlanflowPrefectApiDown"), 30, "the source")
        wait_for(lambda: alerting.receiver.alerts("/human", "PlanflowPipelinePlanSlip"), 30, "the control")
        assert not [
            a
            for a in alerting.receiver.alerts("/human", "PlanflowWorkPoolNotReady")
            if a["labels"]["work_pool"] == pool
        ]
    finally:
        ended = [{**a, "endsAt": datetime.now(UTC).isoformat()} for a in (target, source, pool_alert, control)]
        httpx.post(am, json=ended, timeout=10, auth=auth)


@pytest.mark.parametrize(
    ("service", "alertname", "severity"),
    [("bridge", "PlanflowBridgeDown", "critical"), ("pushgateway", "PlanflowPushgatewayDown", "warning")],
    ids=["bridge", "pushgateway"],
)
def test_killing_a_service_reaches_the_human_receiver_without_the_bridge(alerting, service, alertname, severity):
    receiver = alerting.receiver
    killed = time.time()
    services.stop(service, alerting.paths)
    try:
        fired = wait_for(
            lambda: receiver.alerts("/human", alertname, "firing", killed), 60, f"{alertname}", interval=0.5
        )
        alert = fired[0]
        assert alert["labels"]["severity"] == severity
        assert alert["annotations"]["runbook_url"].endswith(f"RUNBOOK.md#{alertname.lower()}")
        assert not receiver.alerts("/watchdog", alertname), "only the Watchdog goes to the dead man's switch"
    finally:
        alerting.restart()
    wait_for(
        lambda: receiver.alerts("/human", alertname, "resolved", killed), 60, f"{alertname} resolved", interval=0.5
    )


def test_prefect_down_reaches_the_human_receiver_while_prefect_is_still_down(alerting):
    receiver = alerting.receiver
    stopped = time.time()
    stack.down(alerting.paths)
    try:
        fired = wait_for(
            lambda: receiver.alerts("/human", "PlanflowPrefectApiDown", "firing", stopped),
            60,
            "PrefectApiDown",
            interval=0.5,
        )
        # not through the bridge and Prefect: a human hears of it during the outage, not after
        assert not stack.status(alerting.paths).running
        assert fired[0]["labels"]["severity"] == "critical"
    finally:
        stack.up(alerting.paths, port=alerting.prefect_port)
    wait_for(
        lambda: receiver.alerts("/human", "PlanflowPrefectApiDown", "resolved", stopped), 90, "resolved", interval=0.5
    )


def test_the_watchdog_reaches_the_dead_mans_switch_and_stops_when_alertmanager_dies(alerting):
    receiver = alerting.receiver
    start = time.time()
    beats = wait_for(
        lambda: (lambda b: b if len(b) >= 2 else None)(receiver.alerts("/watchdog", "PlanflowWatchdog", after=start)),
        120,
        "two Watchdog notifications",
        interval=0.5,
    )
    assert beats[0]["labels"]["severity"] == "none"
    assert not receiver.alerts("/human", "PlanflowWatchdog"), "the Watchdog must not page a human"

    services.stop("alertmanager", alerting.paths)
    killed = time.time()
    try:
        # Prometheus sees Alertmanager down (it cannot tell anyone: that is the Watchdog's job)
        wait_for(
            lambda: (
                alerting.firing_in_prometheus("PlanflowAlertmanagerDown")
                and time.time() > killed + 3 * WATCHDOG_INTERVAL
            ),
            60,
            "PlanflowAlertmanagerDown firing in Prometheus, three Watchdog intervals after the kill",
            interval=0.5,
        )
        # (a notification sent as it died may be handled just after `killed`: 2 s of grace)
        late = receiver.alerts("/watchdog", "PlanflowWatchdog", after=killed + 2)
        assert not late, "a Watchdog after Alertmanager died"
        assert not receiver.alerts("/human", "PlanflowAlertmanagerDown", after=killed)
    finally:
        alerting.restart()
    back = time.time()
    wait_for(
        lambda: receiver.alerts("/watchdog", "PlanflowWatchdog", after=back), 120, "the Watchdog back", interval=0.5
    )


def test_every_prometheus_and_alertmanager_metric_the_rules_use_exists_in_the_real_stack(alerting):
    used = set()
    for alert in ALL_ALERTS:
        used |= set(re.findall(r"\b((?:prometheus|alertmanager)_\w+)\b", alert.expr))
    assert len(used) >= 6, used
    query = f"{alerting.url('prometheus')}/api/v1/query"
    missing = [
        name
        for name in sorted(used)
        if not httpx.get(query, params={"query": f'count({{__name__="{name}"}})'}).json()["data"]["result"]
    ]
    assert not missing, f"metrics the rules use that Prometheus 2.42 / Alertmanager 0.25 do not expose: {missing}"
