"""The Prefect server goes down and comes back: the bridge delivers every alert exactly
once, and the exporter reports the outage and recovers; the remediation worker outlives
its pool gone from the server. Uses a Prefect server of its
own (planflow.stack on its own state folder and port), not the session's."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from planflow.monitoring.bridge import create_app
from planflow.monitoring.bridge.forwarder import Forwarder
from planflow.monitoring.bridge.spool import Spool
from planflow.monitoring.exporter import Exporter
from planflow.monitoring.metrics import BridgeMetrics
from planflow.ops import server as stack
from planflow.settings import StatePaths

from tests.conftest import own_temp_folder
from tests.monitoring.helpers import ThreadedServer, alert, free_port, read_events, wait_for, webhook


@dataclass
class OwnServer:
    """A Prefect server of the test's own (its state folder and port), and the bridge token."""

    paths: StatePaths
    port: int
    api: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def own_server(prefect_server) -> Iterator[OwnServer]:
    """Started for the test, stopped after it (the test may stop and restart it meanwhile)."""
    paths = StatePaths(own_temp_folder("planflow-outage-"))
    port = free_port()
    stack.up(paths, port=port)
    try:
        yield OwnServer(paths, port, f"http://127.0.0.1:{port}/api", uuid.uuid4().hex)
    finally:
        stack.down(paths)


def test_alerts_posted_while_prefect_is_down_arrive_exactly_once(own_server, tmp_path):
    paths, port, api, token, auth = own_server.paths, own_server.port, own_server.api, own_server.token, own_server.auth
    app = create_app(tmp_path / "spool.sqlite3", token, api, max_backoff=1.0)
    exporter = Exporter(api_url=api, poll_timeout=5)
    with ThreadedServer(app, free_port()) as bridge:
        assert asyncio.run(exporter.poll_once())
        stack.down(paths)
        assert not asyncio.run(exporter.poll_once())
        assert exporter.registry.get_sample_value("planflow_exporter_prefect_up") == 0

        pipeline = f"outage-{uuid.uuid4().hex[:8]}"
        start = datetime.now(UTC) - timedelta(minutes=1)
        sent = [alert("firing", f"fp{i}-{pipeline}", start, pipeline=pipeline, n=str(i)) for i in range(40)]
        sent += [alert("resolved", f"fp{i}-{pipeline}", start, pipeline=pipeline, n=str(i)) for i in range(10)]
        for i in range(0, len(sent), 10):
            response = httpx.post(f"{bridge.url}/alerts", json=webhook(*sent[i : i + 10]), headers=auth, timeout=30)
            assert response.status_code == 200, response.text
        # Alertmanager retries and duplicates: send a part again
        again = httpx.post(f"{bridge.url}/alerts", json=webhook(*sent[:15]), headers=auth)
        assert again.json() == {"stored": 0, "duplicates": 15}
        metrics = app.state.registry.get_sample_value
        wait_for(
            lambda: (metrics("planflow_bridge_forward_failures_total") or 0) >= 2,
            30,
            "failed forwarding attempts while Prefect is down",
        )
        assert metrics("planflow_bridge_spool_depth") == 50

        stack.up(paths, port=port)
        wait_for(lambda: metrics("planflow_bridge_spool_depth") == 0, 60, "the spool to drain")
        events = wait_for(
            lambda: (lambda e: e if len(e) >= 50 else None)(read_events(api, f"planflow.pipeline.{pipeline}")),
            30,
            "50 events",
            interval=0.5,
        )
        keys = [(e["payload"]["fingerprint"], e["payload"]["status"]) for e in events]
        assert len(keys) == len(set(keys)) == 50
        assert sum(1 for _, s in keys if s == "resolved") == 10
        assert metrics("planflow_bridge_events_forwarded_total") == 50
        assert asyncio.run(exporter.poll_once())
        assert exporter.registry.get_sample_value("planflow_exporter_prefect_up") == 1


# -- alerts Prefect accepted just before it stopped ---------------------------------------
def _remediation_automation(api: str) -> Any:
    """On the outage server: a deployment standing in for a remediation flow (no worker:
    the run created is what counts) and an automation shaped like planflow's failover
    one (planflow.alert.firing about a work pool -> RunDeployment)."""
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("outage-remediation")
        deployment_id = client.create_deployment(flow_id=flow_id, name="remediation", entrypoint="remedy.py:remedy")
        Automation(
            name="outage: remediate pool alerts",
            trigger=EventTrigger(
                expect={"planflow.alert.firing"},
                match={"prefect.resource.id": "prefect.work-pool.*"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[
                RunDeployment(
                    source="selected",
                    deployment_id=deployment_id,
                    parameters={"pool": {"__prefect_kind": "jinja", "template": "{{ event.resource.name }}"}},
                )
            ],
        ).create()
    return deployment_id


def _runs_per_pool(api: str, deployment_id: Any) -> Counter:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])), limit=200
        )
    return Counter(run.parameters.get("pool") for run in runs)


def test_alerts_accepted_just_before_prefect_stops_are_remediated_after_it_returns(own_server, tmp_path):
    paths, port, api, token, auth = own_server.paths, own_server.port, own_server.api, own_server.token, own_server.auth
    deployment_id = _remediation_automation(api)
    app = create_app(tmp_path / "spool.sqlite3", token, api)  # the default 30 s backoff
    spool = app.state.spool
    with ThreadedServer(app, free_port()) as bridge:
        tag = uuid.uuid4().hex[:6]
        before = [f"lost-{tag}-{i}" for i in range(5)]
        now = datetime.now(UTC)
        posted = webhook(*(alert("firing", f"fp-{p}", now, alertname="PlanflowPoolDown", work_pool=p) for p in before))
        assert httpx.post(f"{bridge.url}/alerts", json=posted, headers=auth, timeout=30).status_code == 200
        wait_for(lambda: spool.depth() == 0, 10, "the alerts to be forwarded", interval=0.02)
        time.sleep(0.3)
        stack.down(paths)  # 0.3 s after Prefect accepted them

        during = f"lost-{tag}-during"
        late = webhook(alert("firing", f"fp-{during}", now, alertname="PlanflowPoolDown", work_pool=during))
        assert httpx.post(f"{bridge.url}/alerts", json=late, headers=auth, timeout=30).status_code == 200
        # long enough for the forwarder's backoff to grow past 8 s
        wait_for(
            lambda: (app.state.registry.get_sample_value("planflow_bridge_forward_failures_total") or 0) >= 6,
            60,
            "the forwarder to back off",
        )
        stack.up(paths, port=port)
        back = time.monotonic()
        wait_for(lambda: spool.depth() == 0, 30, "the spool to drain after Prefect returned", interval=0.1)
        drained = time.monotonic() - back
        # The backoff had reached 8-16 s: the health probe cuts it short.
        assert drained < 8, f"the spool drained {drained:.1f} s after Prefect returned"

        pools = [*before, during]
        runs = wait_for(
            lambda: (lambda c: c if all(c[p] >= 1 for p in pools) else None)(_runs_per_pool(api, deployment_id)),
            60,
            "a remediation run for every alert",
            interval=1,
        )
        # at least once; never a storm of duplicates
        assert all(runs[p] <= 2 for p in pools), runs
        counts = spool.counts()
        print(f"drained {drained:.2f} s after Prefect returned; runs {dict(runs)}; spool {counts}")


def test_a_backoff_after_a_failed_connection_ends_at_the_first_answer_even_if_prefect_was_back_before_it(
    prefect_server, tmp_path
):
    """The race CI met: Prefect came back between the failed attempt and the backoff's
    first probe, so no probe ever saw it down and the 16 s backoff was slept out. A
    refusal from a Prefect that answers its health probe is still waited out in full."""
    metrics = BridgeMetrics(CollectorRegistry())
    forwarder = Forwarder(Spool(tmp_path / "spool.sqlite3"), metrics, prefect_server.url, probe_seconds=0.1)

    async def backoff_after(error: BaseException, seconds: float) -> float:
        forwarder.last_error = error
        async with httpx.AsyncClient() as http:
            forwarder._http = http
            started = time.monotonic()
            await forwarder._backoff(seconds)
            return time.monotonic() - started

    refused = httpx.ConnectError("All connection attempts failed")
    assert asyncio.run(backoff_after(refused, 16.0)) < 2.0
    request = httpx.Request("POST", f"{prefect_server.url}/events")
    busy = httpx.HTTPStatusError("503", request=request, response=httpx.Response(503, request=request))
    assert asyncio.run(backoff_after(busy, 1.0)) >= 0.9


# -- the remediation worker when its pool is gone --------------------------------------------
def _remediation_worker_beat_since(api: str, name: str, since: datetime) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from planflow.remediation.names import REMEDIATION_POOL

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        workers = client.read_workers_for_work_pool(REMEDIATION_POOL)
    return any(w.name == name and w.last_heartbeat_time and w.last_heartbeat_time > since for w in workers)


def test_the_remediation_worker_carries_on_after_its_server_lost_its_pool(own_server, tmp_path):
    """Prefect's worker exits on a 4xx from its server: the remediation pool gone (the
    project's server started on a new database, `server up --db postgres`), then made
    again by `planflow stack up`'s automations. The remediation worker died with it, and
    nothing was remediated until a later `stack up` started a new one. It now starts
    Prefect's worker again (backing off), says so in its log, and serves the pool once
    it is back. (A server merely away is outlived by Prefect's worker itself: its client
    retries each request for about a minute; a 5-minute outage was.)"""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from planflow.remediation.names import REMEDIATION_POOL
    from planflow.remediation.worker_process import start_remediation_worker, stop_process

    api = own_server.api

    def make_pool() -> None:
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=REMEDIATION_POOL, type="process"))

    make_pool()
    log = tmp_path / "remediation-worker.log"
    name = f"gone-{uuid.uuid4().hex[:6]}"
    worker = start_remediation_worker(log, env={**os.environ, "PREFECT_API_URL": api}, name=name)
    try:
        started = datetime.now(UTC)
        wait_for(lambda: _remediation_worker_beat_since(api, name, started - timedelta(seconds=5)), 60, "its worker")
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            client.delete_work_pool(REMEDIATION_POOL)
        wait_for(
            lambda: "starting it again" in log.read_text() or worker.poll() is not None,
            60,
            "Prefect's worker to stop on its pool gone",
            interval=0.5,
        )
        assert worker.poll() is None, f"the remediation worker exited ({worker.returncode}):\n{log.read_text()[-3000:]}"
        back = datetime.now(UTC)
        make_pool()
        # the restarts back off to at most 30 s apart
        wait_for(lambda: _remediation_worker_beat_since(api, name, back), 90, "its worker again", interval=1)
        said = [line for line in log.read_text().splitlines() if "starting it again" in line]
        assert said, log.read_text()[-3000:]
        assert "404 Not Found" in said[0], said[0]  # the cause, not the task group's cancellation
        assert f"planflow remediation worker {name} on {REMEDIATION_POOL}: Prefect's worker stopped (" in said[0]
    finally:
        stop_process(worker)
