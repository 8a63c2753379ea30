"""The alert path end to end with real services: an Alertmanager webhook (posted here as
Alertmanager posts it) -> the real bridge -> `planflow.alert.firing` -> the automation ->
the failover flow on the remediation worker -> pool paused; resolved -> resumed. And a
storm of the same alert through the same path leads to one pause only. The audit trail
(events related to the alert's event, the Pushgateway counter, the artifact) is checked."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.remediation.alerts import alert, bridge_token, post
from tests.remediation.conftest import alert_driven_remediation, start_pool_worker, wait_until


@pytest.fixture(scope="module")
def alert_loop(monitoring_stack, module_leftovers, tmp_path_factory):
    paths, started = monitoring_stack
    logs = tmp_path_factory.mktemp("alert-loop")
    with alert_driven_remediation(monitoring_stack, logs) as gateway:
        yield {
            "bridge": started["bridge"].url,
            "token": bridge_token(paths),
            "pushgateway": gateway,
            "logs": logs,
            "leftovers": module_leftovers,
        }


def _events(prefix: str, since: datetime) -> list[dict]:
    from planflow.monitoring.events import read_events
    from planflow.monitoring.prefect_api import auth_headers

    return read_events(os.environ["PREFECT_API_URL"].rstrip("/"), None, prefix, since, auth_headers())


def _about(events: list[dict], resource_id: str) -> list[dict]:
    return [e for e in events if any(r["prefect.resource.id"] == resource_id for r in e.get("related", []))]


def _count(gateway: str, action: str, outcome: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{gateway}/metrics", timeout=5).text):
        for s in family.samples:
            if (
                s.name == "planflow_remediations_total"
                and s.labels.get("action") == action
                and s.labels.get("outcome") == outcome
            ):
                return s.value
    return 0.0


def test_alert_through_the_bridge_fails_over_and_resolves(alert_loop):
    from prefect.client.orchestration import get_client

    from planflow.remediation.automations import stop_process
    from planflow.remediation.pools import live_workers

    pool = alert_loop["leftovers"].pool(f"al-{uuid.uuid4().hex[:6]}", backup_pool="local", served=True)
    since = datetime.now(UTC) - timedelta(seconds=5)
    before = _count(alert_loop["pushgateway"], "failover", "succeeded")
    firing = alert("PlanflowWorkerHeartbeatStale", {"work_pool": pool})
    post(alert_loop["bridge"], alert_loop["token"], [firing])
    with get_client(sync_client=True) as client:
        wait_until(lambda: client.read_work_pool(pool).is_paused, 60, what=f"failover to pause {pool}")
    [alert_event] = [
        e
        for e in _events("planflow.alert.firing", since)
        if e["resource"]["prefect.resource.id"] == f"prefect.work-pool.{pool}"
        and e["payload"]["labels"]["alertname"] == "PlanflowWorkerHeartbeatStale"
    ]
    outcome = wait_until(
        lambda: _about(_events("planflow.remediation.outcome", since), f"prefect.event.{alert_event['id']}"),
        30,
        what="the outcome event",
    )
    # The pool also has no worker, so Prometheus may fire PlanflowWorkPoolNotReady for it as
    # well: whichever alert came first failed it over; the other one found it done.
    assert outcome[0]["payload"]["outcome"] in ("succeeded", "skipped"), outcome
    assert outcome[0]["payload"]["alert_event_id"] == alert_event["id"]
    started = _about(_events("planflow.remediation.started", since), f"prefect.event.{alert_event['id']}")
    assert started, "no planflow.remediation.started event"
    # trigger -> remediation running, measured by the flow itself and pushed for Grafana
    assert 0 < started[0]["payload"]["seconds_since_trigger"] < 60, started[0]["payload"]
    from prometheus_client.parser import text_string_to_metric_families

    latency = [
        s.value
        for f in text_string_to_metric_families(httpx.get(f"{alert_loop['pushgateway']}/metrics", timeout=5).text)
        for s in f.samples
        if s.name == "planflow_remediation_alert_latency_seconds" and s.labels.get("action") == "failover"
    ]
    assert latency and latency[0] > 0, latency
    assert _count(alert_loop["pushgateway"], "failover", "succeeded") >= before + 1
    run_id = next(
        r["prefect.resource.id"].split(".")[-1]
        for r in outcome[0]["related"]
        if r["prefect.resource.role"] == "remediation-flow-run"
    )
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
        assert any(a.key == "remediation-failover" and "failover" in (a.data or "") for a in artifacts)

        worker = start_pool_worker(pool, alert_loop["logs"] / f"{pool}.log")  # the worker is back
        try:
            wait_until(lambda: live_workers(client, pool), 60, what=f"a worker on {pool}")
            post(
                alert_loop["bridge"],
                alert_loop["token"],
                [
                    alert(
                        "PlanflowWorkerHeartbeatStale",
                        {"work_pool": pool},
                        status="resolved",
                        starts=datetime.fromisoformat(firing["startsAt"].replace("Z", "+00:00")),
                        fingerprint=firing["fingerprint"],
                    )
                ],
            )
            wait_until(lambda: not client.read_work_pool(pool).is_paused, 60, what=f"{pool} to be resumed")
        finally:
            stop_process(worker)


STORM = 100
OTHERS = 4


def _remediation_runs(client, since: datetime) -> list:
    """The remediation runs created for this test: the session's server holds every earlier
    module's too, and a plain read returns 200 of them in id order (random ids)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    from planflow.remediation.automations import REMEDIATION_POOL

    return client.read_flow_runs(
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[REMEDIATION_POOL])),
        flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=200,
    )


def _first_alert_run(runs: list, pool: str, alertname: str):
    """The first remediation run started for `alertname` on `pool` (not a re-check)."""

    def about(run) -> bool:
        given = run.parameters.get("alert") or {}
        name = given.get("alertname") or (given.get("labels") or {}).get("alertname")
        return (
            given.get("resource_id") == f"prefect.work-pool.{pool}" and name == alertname and not given.get("recheck")
        )

    mine = [r for r in runs if about(r)]
    return sorted(mine, key=lambda r: r.created)


def test_a_storm_on_one_pool_makes_one_run_and_delays_no_other_pool(alert_loop):
    """100 different alerts of one name on one pool are coalesced by the bridge before
    any run exists: one failover run, one pause; alerts for other pools posted right
    after the storm are remediated within their usual latency."""
    import math

    from prefect.client.orchestration import get_client

    leftovers = alert_loop["leftovers"]
    pool = leftovers.pool(f"storm-{uuid.uuid4().hex[:6]}", backup_pool="local", served=True)
    others = [leftovers.pool(f"calm-{uuid.uuid4().hex[:6]}", backup_pool="local") for _ in range(OTHERS)]
    since = datetime.now(UTC) - timedelta(seconds=5)
    now = datetime.now(UTC)
    storm = [
        alert(
            # a worker alert: a failure-rate one acts only where runs failed (failure_check)
            "PlanflowWorkPoolNotReady",
            {"work_pool": pool, "instance": f"w{i}"},
            starts=now - timedelta(seconds=i),
        )
        for i in range(STORM)
    ]
    for i in range(0, STORM, 25):  # as Alertmanager sends a large group: several posts
        post(alert_loop["bridge"], alert_loop["token"], storm[i : i + 25])
    posted = {}
    for other in others:
        posted[other] = datetime.now(UTC)
        post(alert_loop["bridge"], alert_loop["token"], [alert("PlanflowWorkerHeartbeatStale", {"work_pool": other})])

    def started():
        with get_client(sync_client=True) as client:
            runs = _remediation_runs(client, since)
        firsts = {p: _first_alert_run(runs, p, "PlanflowWorkerHeartbeatStale") for p in others}
        if all(f and f[0].start_time for f in firsts.values()):
            created = {p: (f[0].created - posted[p]).total_seconds() for p, f in firsts.items()}
            return runs, created, {p: (f[0].start_time - posted[p]).total_seconds() for p, f in firsts.items()}
        return None

    # Bounded generously: the remediation worker runs each flow in a process of its own
    # (seconds each on a loaded 2-core machine); 100 runs queued ahead would take minutes.
    runs, created, started_after = wait_until(
        started, 300, 1, what=f"the failover runs of the {OTHERS} other pools to start"
    )

    def p95(values) -> float:
        ordered = sorted(values)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    print(
        f"other pools during a {STORM}-alert storm: alert -> remediation run created p95 "
        f"{p95(created.values()):.1f} s {sorted(round(v, 1) for v in created.values())}; "
        f"-> run started p95 {p95(started_after.values()):.1f} s {sorted(round(v, 1) for v in started_after.values())}"
    )
    # What the storm could delay: the runs Prefect creates (the issue: 198 s, behind 101
    # runs). When they start also depends on the remediation worker's slots and the
    # machine's load, which the bounded wait above covers.
    assert p95(created.values()) < 60, created

    storm_runs = _first_alert_run(runs, pool, "PlanflowWorkPoolNotReady")
    assert len(storm_runs) == 1, [(r.name, r.state_name) for r in storm_runs]

    def delivered(name: str) -> list[dict]:  # an event occurs when its alert started: up to STORM seconds ago
        # the storm's own alerts (instance w0..w99): the pool's worker has stopped, so
        # Prometheus may fire the same alert for it, coalesced into the same episode
        return [
            e
            for e in _events(name, since - timedelta(seconds=STORM + 60))
            if e["resource"]["prefect.resource.id"] == f"prefect.work-pool.{pool}"
            and e["payload"].get("labels", {}).get("instance") in instances
        ]

    instances = {f"w{i}" for i in range(STORM)}
    # Prefect stores events in batches, a few seconds after they are sent: all of them, then not one more.
    # Every alert of the storm arrives once: one leads (unless Prometheus's own alert came first), the rest coalesced.
    led, coalesced = wait_until(
        lambda: (
            (found := (delivered("planflow.alert.firing"), delivered("planflow.alert.coalesced")))
            and len(found[0]) + len(found[1]) >= STORM
            and found
        ),
        60,
        what=f"the {STORM} alerts' events stored",
    )
    assert len(led) <= 1 and len(led) + len(coalesced) == STORM, (len(led), len(coalesced))
    with get_client(sync_client=True) as client:
        wait_until(lambda: client.read_work_pool(pool).is_paused, 60, what=f"failover to pause {pool}")
    pauses = wait_until(
        lambda: [
            e
            for e in _events("planflow.remediation.action", since)
            if e["payload"].get("what") == "pause-work-pool" and e["payload"].get("work_pool") == pool
        ],
        30,
        what="the pause action event",
    )
    assert len(pauses) == 1, pauses

    def settled():  # the module's cleanup must not race the guard leases of running runs
        with get_client(sync_client=True) as client:
            recent = _remediation_runs(client, since)
            mine = [r for r in recent for p in (pool, *others) if _first_alert_run([r], p, r_name(r))]
        return not any(r.state and r.state.type.value in ("RUNNING", "PENDING") for r in mine)

    wait_until(settled, 180, 2, what="the remediation runs of this test to finish")


def r_name(run) -> str:
    given = run.parameters.get("alert") or {}
    return given.get("alertname") or (given.get("labels") or {}).get("alertname") or ""
