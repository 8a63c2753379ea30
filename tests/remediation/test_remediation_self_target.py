"""The remediation machinery is never its own target (issue 13), against the real stack:
Prefect server, exporter, Prometheus, Alertmanager, the bridge, the automations and a
remediation worker.

The sequence that paused `planflow-remediation` before: remediation runs that fail (their
failures fed the pool failure rate of the remediation pool), then alerts naming the
remediation pool (PlanflowPoolFailureRateHigh, PlanflowWorkPoolNotReady and, in a storm,
PlanflowLateRunBacklog, which made the rescale start a plain worker there). Afterwards the
pool must be untouched (not paused, no extra worker, no remediation run about it) and a
real alert about a normal pool still remediated.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import psutil
import pytest

from planflow.remediation.alert import AlertEvent
from planflow.remediation.names import FAILOVER_FLOW, REMEDIATION_POOL, deployment_of

from tests.remediation.alerts import alert, bridge_token, post
from tests.remediation.conftest import alert_driven_remediation, wait_until

FAILED_REMEDIATIONS = 6
SELF_ALERTS = ("PlanflowPoolFailureRateHigh", "PlanflowWorkPoolNotReady", "PlanflowLateRunBacklog")


@pytest.fixture(scope="module")
def loop(monitoring_stack, module_leftovers, tmp_path_factory):
    paths, started = monitoring_stack
    logs = tmp_path_factory.mktemp("self-target")
    since = datetime.now(UTC) - timedelta(seconds=1)
    with alert_driven_remediation(monitoring_stack, logs) as gateway:
        yield {
            "bridge": started["bridge"].url,
            "prometheus": started["prometheus"].url,
            "token": bridge_token(paths),
            "pushgateway": gateway,
            "leftovers": module_leftovers,
            "since": since,
        }


def _query(prometheus: str, expr: str) -> list[dict]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    answer.raise_for_status()
    return answer.json()["data"]["result"]


def _remediations_about_the_remediation_pool(since: datetime) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    from planflow.remediation.heal_cleanup import about_pools

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[REMEDIATION_POOL])), limit=200
        )
    return [r for r in runs if (r.created is None or r.created >= since) and about_pools(r, [REMEDIATION_POOL])]


def _extra_workers_on_the_remediation_pool() -> list[str]:
    from prefect.client.orchestration import get_client

    from planflow.remediation.pools import live_workers
    from planflow.remediation.scaling import WORKER_PREFIX

    with get_client(sync_client=True) as client:
        foreign = [w for w in live_workers(client, REMEDIATION_POOL) if not w.startswith("test-remediation-")]
    marker = f"{WORKER_PREFIX}{REMEDIATION_POOL}"
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []):
            foreign.append(f"pid {proc.pid}")
    return foreign


def test_failed_remediations_are_counted_apart_never_in_the_pool_failure_rate(loop):
    """Remediation runs that fail (here: a parameter their flow refuses) show in
    planflow_prefect_remediation_runs_finished_total, and not in the pools' counter that
    PlanflowPoolFailureRateHigh reads."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_of(FAILOVER_FLOW))
        runs = [
            client.create_flow_run_from_deployment(deployment.id, parameters={"alert": {"no_such_field": i}})
            for i in range(FAILED_REMEDIATIONS)
        ]
        wait_until(
            lambda: all(client.read_flow_run(r.id).state.is_final() for r in runs),
            120,
            what=f"the {FAILED_REMEDIATIONS} remediation runs to end",
        )
        states = [client.read_flow_run(r.id).state.type.value for r in runs]
    assert states == ["FAILED"] * FAILED_REMEDIATIONS, states
    counted = f'planflow_prefect_remediation_runs_finished_total{{flow="{FAILOVER_FLOW}",state="failed"}}'
    wait_until(
        lambda: sum(float(s["value"][1]) for s in _query(loop["prometheus"], counted)) >= FAILED_REMEDIATIONS,
        60,
        what=f"Prometheus to scrape {counted} >= {FAILED_REMEDIATIONS}",
    )
    # The same scrape holds the pools' counter: nothing of the remediation pool in it.
    in_pool_rate = _query(
        loop["prometheus"], f'planflow_prefect_flow_runs_finished_total{{work_pool="{REMEDIATION_POOL}"}}'
    )
    assert in_pool_rate == [], in_pool_rate
    assert _query(loop["prometheus"], f'ALERTS{{work_pool="{REMEDIATION_POOL}"}}') == []


def test_alerts_naming_the_remediation_pool_leave_it_untouched_and_a_real_alert_is_remediated(loop):
    from prefect.client.orchestration import get_client

    from planflow.remediation.heal_watch import events_about

    since = datetime.now(UTC) - timedelta(seconds=2)
    forged = [
        alert(name, {"work_pool": REMEDIATION_POOL, "work_queue": "default", "severity": "warning"})
        for name in SELF_ALERTS
    ]
    post(loop["bridge"], loop["token"], forged)
    wait_until(
        lambda: (
            len(events_about("planflow.alert.firing", f"prefect.work-pool.{REMEDIATION_POOL}", since))
            >= len(SELF_ALERTS)
        ),
        60,
        what="the bridge to forward the alerts about the remediation pool to Prefect",
    )
    # A real alert on a normal pool, after them: once it is remediated, the automations
    # have had the earlier events too.
    pool = loop["leftovers"].pool(f"real-{uuid.uuid4().hex[:6]}", backup_pool="local", served=True)
    post(loop["bridge"], loop["token"], [alert("PlanflowWorkerHeartbeatStale", {"work_pool": pool})])
    with get_client(sync_client=True) as client:
        wait_until(lambda: client.read_work_pool(pool).is_paused, 90, what=f"the failover to pause {pool}")
        assert not client.read_work_pool(REMEDIATION_POOL).is_paused
    assert _remediations_about_the_remediation_pool(since) == []  # no run even created
    assert _extra_workers_on_the_remediation_pool() == []


@pytest.mark.parametrize("alertname", SELF_ALERTS)
def test_a_remediation_flow_refuses_the_remediation_pool_itself(loop, alertname):
    """Defence in depth: a flow run started by hand (or by an automation edited in the
    UI) with an alert about the remediation pool ends "skipped", saying why."""
    from prefect.client.orchestration import get_client

    from planflow.prefect.blocks.alert_route import load_route
    from planflow.remediation.failover import failover
    from planflow.remediation.rescale import rescale

    flow = rescale if load_route(alertname).action == "rescale" else failover
    labels = {"alertname": alertname, "work_pool": REMEDIATION_POOL, "work_queue": "default"}
    resource = f"prefect.work-pool.{REMEDIATION_POOL}"
    result = flow(AlertEvent(event="planflow.alert.firing", resource_id=resource, labels=labels))
    assert result["outcome"] == "skipped", result
    assert REMEDIATION_POOL in result["reason"] and "remediations themselves" in result["reason"], result
    with get_client(sync_client=True) as client:
        assert not client.read_work_pool(REMEDIATION_POOL).is_paused
    assert _extra_workers_on_the_remediation_pool() == []


def test_an_alert_about_a_pool_that_does_not_exist_is_skipped_not_failed(loop):
    from planflow.remediation.failover import failover

    pool = f"nowhere-{uuid.uuid4().hex[:6]}"
    result = failover(
        AlertEvent(
            event="planflow.alert.firing",
            resource_id=f"prefect.work-pool.{pool}",
            labels={"alertname": "PlanflowPoolFailureRateHigh", "work_pool": pool},
        )
    )
    assert result["outcome"] == "skipped" and "does not exist" in result["reason"], result


def test_no_extra_worker_is_ever_started_on_the_remediation_pool():
    from planflow.remediation.scaling import start_worker

    with pytest.raises(ValueError, match=f"no extra worker for {REMEDIATION_POOL}"):
        start_worker(REMEDIATION_POOL, "process", "planflow-rescale-test")
