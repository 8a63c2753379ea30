"""Rescale against the real Prefect server: a pool with a backlog and no worker gets its
concurrency limit raised and a real worker process started (bounded by the route), the
backlog drains; on resolved the worker is stopped and the limit restored."""

from __future__ import annotations

import uuid

import psutil

from planflow.remediation.alert import AlertEvent

from tests.remediation.conftest import FLAKY_PIPELINES, deploy_flaky, route_override, wait_until


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_rescale_within_bounds_then_back_down(module_leftovers, monkeypatch):
    from prefect.client.orchestration import get_client

    from planflow.ops.workers import stop_group
    from planflow.remediation.guard import Guard
    from planflow.remediation.pools import live_workers
    from planflow.remediation.rescale import rescale

    monkeypatch.setenv("PLANFLOW_PIPELINES", FLAKY_PIPELINES)
    alert = "PlanflowLateRunBacklog"
    pool = module_leftovers.pool(f"rs-{uuid.uuid4().hex[:6]}", concurrency_limit=1)
    deployment = deploy_flaky(f"remediation-flaky-{pool}", pool, ["planflow", "process"])
    labels = {"alertname": alert, "work_pool": pool, "work_queue": "default"}
    firing = AlertEvent(event="planflow.alert.firing", work_pool=pool, labels=labels)
    resolved = AlertEvent(event="planflow.alert.resolved", work_pool=pool, labels=labels)
    started_pids: list[int] = []
    with route_override(
        alert,
        action="rescale",
        max_attempts=3,
        cooldown_seconds=300,
        rate_limit=10,
        min_workers=1,
        max_workers=1,
        max_concurrency=2,
    ) as route:
        try:
            with get_client(sync_client=True) as client:
                runs = [client.create_flow_run_from_deployment(deployment.id, parameters={"seed": i}) for i in range(3)]
                result = rescale(
                    AlertEvent(
                        event_id=uuid.uuid4(),
                        event="planflow.alert.firing",
                        resource_id=f"prefect.work-pool.{pool}",
                        labels=labels,
                    )
                )
                assert result["outcome"] == "succeeded", result
                assert result["backlog_runs"] == 3
                assert result["makespan_with_n_plus_1_s"] < result["makespan_with_n_s"], result
                assert client.read_work_pool(pool).concurrency_limit == 2
                assert len(result["started"]) == 1
                ledger = Guard(route).ledger(f"rescale:{pool}")
                started_pids = [w["pid"] for w in ledger["workers"]]
                wait_until(lambda: live_workers(client, pool), 60, what="the started worker's heartbeat")

                again = rescale(firing)
                assert again["outcome"] == "skipped" and "max_workers" in again["reason"], again  # bound

                for run in runs:
                    wait_until(
                        lambda r=run: client.read_flow_run(r.id).state.is_final(), 180, 1, what="the backlog to drain"
                    )
                assert all(client.read_flow_run(r.id).state.is_completed() for r in runs)

                down = rescale(resolved)
                assert down["outcome"] == "succeeded", down
                assert client.read_work_pool(pool).concurrency_limit == 1
                assert not any(_alive(pid) for pid in started_pids)
                # stopped on purpose: no offline worker left for PlanflowWorkerHeartbeatStale to report
                started_names = {w["name"] for w in ledger["workers"]}
                assert not started_names & {w.name for w in client.read_workers_for_work_pool(pool)}
        finally:
            for pid in started_pids:
                if _alive(pid):
                    stop_group(pid, 10)


def test_a_pool_without_workers_and_with_a_backup_is_left_to_the_failover(module_leftovers, monkeypatch):
    """Rescale and failover must not race for the same waiting runs: a backlog on a pool
    that no worker serves and that has a backup pool is the failover's; a paused pool too."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    from planflow.remediation.rescale import rescale

    monkeypatch.setenv("PLANFLOW_PIPELINES", FLAKY_PIPELINES)
    alert = "PlanflowLateRunBacklog"
    pool = module_leftovers.pool(f"rsb-{uuid.uuid4().hex[:6]}", concurrency_limit=1, backup_pool="local")
    deployment = deploy_flaky(f"remediation-flaky-{pool}", pool, ["planflow", "process"])
    labels = {"alertname": alert, "work_pool": pool, "work_queue": "default"}
    with (
        route_override(alert, action="rescale", cooldown_seconds=0, rate_limit=100),
        get_client(sync_client=True) as client,
    ):
        client.create_flow_run_from_deployment(deployment.id, parameters={"seed": 1})
        result = rescale(AlertEvent(event="planflow.alert.firing", work_pool=pool, labels=labels))
        assert result["outcome"] == "skipped" and "backup pool takes its runs" in result["reason"], result
        assert client.read_work_pool(pool).concurrency_limit == 1 and "started" not in result
        client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
        paused = rescale(AlertEvent(event="planflow.alert.firing", work_pool=pool, labels=labels))
        assert paused["outcome"] == "skipped" and "is paused" in paused["reason"], paused
