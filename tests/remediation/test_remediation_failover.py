"""Failover against the real Prefect server and a real process worker: a pool whose
worker is gone gets paused, its stuck run cancelled and resubmitted
on the backup pool's deployment of the same pipeline, where it completes; the resolved
alert resumes the pool."""

from __future__ import annotations

import uuid

import pytest

from planflow.remediation.alert import AlertEvent

from tests.remediation.conftest import (
    FLAKY_PIPELINES,
    deploy_flaky,
    start_pool_worker,
    wait_until,
    worker_that_stopped,
)


@pytest.fixture
def primary_pool(process_pool_worker, module_leftovers, monkeypatch):
    monkeypatch.setenv("PLANFLOW_PIPELINES", FLAKY_PIPELINES)
    return module_leftovers.pool(f"fo-{uuid.uuid4().hex[:6]}", backup_pool="local")


def _alert(pool: str, status: str = "firing") -> AlertEvent:
    return AlertEvent(
        event_id=uuid.uuid4(),
        event=f"planflow.alert.{status}",
        resource_id=f"prefect.work-pool.{pool}",
        labels={"alertname": "PlanflowWorkPoolNotReady", "work_pool": pool, "severity": "critical"},
    )


def _finished(client, flow_run_id, what: str):
    """The flow run once it is final (at most 180 s)."""
    return wait_until(lambda: (r := client.read_flow_run(flow_run_id)).state.is_final() and r, 180, 1, what=what)


def test_failover_pauses_cancels_resubmits_on_backup_and_resume_on_resolved(primary_pool, tmp_path):
    from prefect.client.orchestration import get_client

    from planflow.remediation.automations import stop_process
    from planflow.remediation.failover import failover
    from planflow.remediation.pools import live_workers

    primary = deploy_flaky(f"remediation-flaky-{primary_pool}", primary_pool, ["planflow", "docker"])
    deploy_flaky("remediation-flaky-process", "local-process", ["planflow", "process"])
    with get_client(sync_client=True) as client:
        stuck = client.create_flow_run_from_deployment(primary.id, parameters={"seed": 3})
        result = failover(_alert(primary_pool))
        assert result["outcome"] == "succeeded", result
        assert client.read_work_pool(primary_pool).is_paused
        assert client.read_flow_run(stuck.id).state.type.value == "CANCELLED"
        assert result["backup_work_pool"] == "local-process"
        [moved] = result["resubmitted"]
        assert moved["deployment"] == "remediation-flaky/remediation-flaky-process"
        replan = result["replans"]["remediation-flaky"]
        assert replan["pools"] == ["local"] and replan["makespan_s"] > 0, replan
        new = client.read_flow_run(moved["flow_run_id"])
        assert new.parameters["local_pool"] == "local" and new.parameters["seed"] == 3
        done = _finished(client, new.id, "the resubmitted run to finish")
        assert done.state.is_completed(), done.state

        again = failover(_alert(primary_pool))
        assert again["outcome"] == "skipped" and not again.get("resubmitted"), again  # guard: once

        # Pausing a pool without a worker resolves "not ready" by itself: no resume yet.
        early = failover(_alert(primary_pool, "resolved"))
        assert early["outcome"] == "skipped" and "no live worker" in early["reason"], early
        assert early["next_check"], early  # a re-check of the remediation deployment
        assert client.read_work_pool(primary_pool).is_paused

        worker = start_pool_worker(primary_pool, tmp_path / "worker.log")  # the worker is back
        try:
            wait_until(lambda: live_workers(client, primary_pool), 60, what="a worker on the pool")
            resolved = failover(_alert(primary_pool, "resolved"))
            assert resolved["outcome"] == "succeeded", resolved
            assert not client.read_work_pool(primary_pool).is_paused
        finally:
            stop_process(worker)


def test_a_failover_that_cannot_move_its_waiting_run_is_failed_and_says_why(process_pool_worker, module_leftovers):
    """A run whose flow has no deployment on the backup's work pool stays queued on a paused
    pool: the outcome is "failed" (PlanflowRemediationActionFailed tells someone), with the
    fix; it said "succeeded" with nothing resubmitted."""
    from prefect.client.orchestration import get_client

    from planflow.remediation.failover import failover
    from planflow.remediation.scenarios import deploy_flow

    from tests.remediation.conftest import FLAKY_ENTRY
    from tests.remediation.fixtures.flaky_pipeline import remediation_flaky

    pool = module_leftovers.pool(f"fo-{uuid.uuid4().hex[:6]}", backup_pool="local")
    lonely = remediation_flaky.with_options(name=f"stranded-{uuid.uuid4().hex[:6]}")  # deployed on `pool` only
    primary = deploy_flow(lonely, FLAKY_ENTRY, f"stranded-{pool}", pool, ["planflow", "docker"])
    with get_client(sync_client=True) as client:
        stuck = client.create_flow_run_from_deployment(primary.id, parameters={"seed": 4})
        result = failover(_alert(pool))
        assert result["outcome"] == "failed", result
        assert "could not move to local-process" in result["reason"] and "prefect deploy" in result["reason"], result
        assert client.read_work_pool(pool).is_paused
        assert client.read_flow_run(stuck.id).state.type.value == "SCHEDULED"


def test_a_pool_awaiting_its_first_worker_with_no_waiting_run_is_not_paused(module_leftovers):
    """`prefect deploy` to a pool, then the worker the README starts next: the alert fired
    in between, the failover paused the pool with nothing to move, and the runs sent to it
    next waited on a paused pool."""
    from prefect.client.orchestration import get_client

    from planflow.remediation.failover import failover

    name = module_leftovers.pool(f"fresh-{uuid.uuid4().hex[:6]}", backup_pool="local")
    result = failover(_alert(name))
    assert result["outcome"] == "skipped" and "no worker yet, no waiting run" in result["reason"], result
    with get_client(sync_client=True) as client:
        assert not client.read_work_pool(name).is_paused


def test_runs_sent_to_a_pool_the_failover_paused_are_moved_by_its_re_checks(primary_pool):
    """A pool the failover paused stays paused until a worker is back; a run sent to it
    meanwhile (a schedule, `prefect deployment run`) waited there for good. Each re-check
    (the resolved alert and its follow-ups) moves such runs to the backup pool."""
    from datetime import UTC, datetime, timedelta

    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Scheduled

    from planflow.remediation.failover import failover

    primary = deploy_flaky(f"remediation-flaky-{primary_pool}", primary_pool, ["planflow", "docker"])
    deploy_flaky("remediation-flaky-process", "local-process", ["planflow", "process"])
    worker_that_stopped(primary_pool)
    with get_client(sync_client=True) as client:
        paused = failover(_alert(primary_pool))
        assert paused["outcome"] == "succeeded" and not paused["resubmitted"], paused
        # checked again from the pause on: a PlanflowWorkerHeartbeatStale does not resolve
        # while the pool has no worker, and a trial's run sent there waited, never moved
        assert paused["next_check"], paused
        assert client.read_work_pool(primary_pool).is_paused
        late = client.create_flow_run_from_deployment(primary.id, parameters={"seed": 5})
        # a schedule's next run, not due for an hour: it waits for its time (moved now, a
        # schedule's future runs were started at once, at every check)
        later = datetime.now(UTC) + timedelta(hours=1)
        future = client.create_flow_run_from_deployment(
            primary.id, parameters={"seed": 6}, state=Scheduled(scheduled_time=later)
        )
        check = failover(_alert(primary_pool, "resolved"))
        assert check["outcome"] == "succeeded" and "no live worker" in check["reason"], check
        assert check["next_check"], check  # still paused, checked again
        [moved] = check["resubmitted"]
        assert moved["from"] == late.name and moved["work_pool"] == "local-process", moved
        assert client.read_flow_run(late.id).state.type.value == "CANCELLED"
        assert client.read_flow_run(future.id).state.type.value == "SCHEDULED"
        assert client.read_work_pool(primary_pool).is_paused
        client.set_flow_run_state(future.id, Cancelled(message="test cleanup"), force=True)
        done = _finished(client, moved["flow_run_id"], "the moved run to finish on local-process")
        assert done.state.is_completed(), done.state


def test_a_pool_whose_worker_just_stopped_with_no_backup_and_nothing_waiting_is_not_paused(module_leftovers):
    """A trial: the rescale stopped the idle worker it had added to `local-process`; the
    offline worker's alert failed that pool over (no backup, no waiting run), because a
    worker stopped a moment ago still counted as live. The next failover of the pool it
    backs up then sent its runs to a paused pool."""
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client

    from planflow.remediation.failover import failover

    name = module_leftovers.pool(f"nobackup-{uuid.uuid4().hex[:6]}")
    with get_client(sync_client=True) as client:
        client.send_worker_heartbeat(name, f"stopped-{name}", heartbeat_interval_seconds=30)  # live for 90 s
        alert = _alert(name).model_copy(update={"event_occurred": datetime.now(UTC)})  # after its last beat
        result = failover(alert)
        assert result["outcome"] == "skipped" and "nothing to protect or move" in result["reason"], result
        assert not client.read_work_pool(name).is_paused


def test_a_worker_that_beat_only_before_the_pause_does_not_resume_the_pool(module_leftovers):
    """A dead worker still counts as live for three of its intervals (90 s): the check
    15 s after the pause resumed the pool for it."""
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client

    from planflow.remediation.failover import failover

    name = module_leftovers.pool(f"dead-{uuid.uuid4().hex[:6]}", backup_pool="local")
    with get_client(sync_client=True) as client:
        client.send_worker_heartbeat(name, f"dead-{name}", heartbeat_interval_seconds=30)  # "live" for 90 s
        alert = _alert(name).model_copy(update={"event_occurred": datetime.now(UTC)})
        paused = failover(alert)
        assert paused["outcome"] == "succeeded" and client.read_work_pool(name).is_paused, paused
        assert paused["next_check"], paused
        check = failover(_alert(name, "resolved"))
        assert check["outcome"] == "skipped" and "no live worker" in check["reason"], check
        assert client.read_work_pool(name).is_paused


def test_a_run_moved_by_two_checks_at_once_is_resubmitted_once(primary_pool):
    """Two moves of one waiting run read before either cancelled it (the firing failover
    and a check, or two checks): each resubmitted it, and it ran twice on the backup."""
    from prefect.client.orchestration import get_client

    from planflow.remediation.moves import move_all
    from planflow.remediation.names import FAILOVER_FLOW
    from planflow.remediation.pool_alert import open_pool_alert
    from planflow.remediation.pools import backup_of

    primary = deploy_flaky(f"remediation-flaky-{primary_pool}", primary_pool, ["planflow", "docker"])
    deploy_flaky("remediation-flaky-process", "local-process", ["planflow", "process"])
    alert, _ = open_pool_alert("failover", FAILOVER_FLOW, "PlanflowWorkPoolNotReady", _alert(primary_pool), shared=True)
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(primary.id, parameters={"seed": 7})
        first = move_all(client, alert, [run], backup_of(primary_pool), dry=False)
        second = move_all(client, alert, [run], backup_of(primary_pool), dry=False)  # the same read of it
        [a], [b] = first["resubmitted"], second["resubmitted"]
        assert a["flow_run_id"] == b["flow_run_id"], (a, b)
        done = _finished(client, a["flow_run_id"], "the moved run to finish on local-process")
        assert done.state.is_completed(), done.state


def test_resolved_does_not_resume_a_pool_failover_did_not_pause(module_leftovers):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    from planflow.remediation.failover import failover

    name = module_leftovers.pool(f"manual-{uuid.uuid4().hex[:6]}")
    with get_client(sync_client=True) as client:
        client.update_work_pool(name, WorkPoolUpdate(is_paused=True))  # paused by a person
        result = failover(
            AlertEvent(
                event="planflow.alert.resolved",
                work_pool=name,
                labels={"alertname": "PlanflowWorkPoolNotReady", "work_pool": name},
            )
        )
        assert result["outcome"] == "skipped", result
        assert client.read_work_pool(name).is_paused


def test_a_re_check_carries_the_alert_it_follows_up(module_leftovers):
    """The re-check a resolved failover schedules is a run of the remediation deployment
    whose one parameter is the same alert, resolved, with its re-check number."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    from planflow.prefect.blocks.alert_route import load_route
    from planflow.remediation.failover import failover
    from planflow.remediation.guard import Guard

    name = module_leftovers.pool(f"recheck-{uuid.uuid4().hex[:6]}")
    Guard(load_route("PlanflowWorkPoolNotReady"), shared=True).update(f"failover:{name}", paused=True)
    with get_client(sync_client=True) as client:
        client.update_work_pool(name, WorkPoolUpdate(is_paused=True))
        alert = _alert(name, "resolved")
        result = failover(alert)
        assert result["outcome"] == "skipped" and result["next_check"], result
        runs = [
            r
            for r in client.read_flow_runs(limit=200)
            if "recheck" in r.tags and r.parameters.get("alert", {}).get("work_pool") == name
        ]
        assert len(runs) == 1, runs
        follow_up = AlertEvent.model_validate(runs[0].parameters["alert"])
        assert follow_up.recheck == 1 and follow_up.current_status == "resolved"
        assert follow_up.event_id == alert.event_id and follow_up.labels == alert.labels
        assert follow_up.name_or("") == "PlanflowWorkPoolNotReady" and follow_up.event_occurred is None


def test_only_one_re_check_of_a_pool_waits_at_a_time(module_leftovers):
    """Every resolved alert about a paused pool without a worker used to schedule a
    re-check chain of its own (22 re-check runs in 4 minutes after `planflow demo heal`);
    a second one now finds the first waiting and adds no run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    from planflow.prefect.blocks.alert_route import load_route
    from planflow.remediation.failover import failover
    from planflow.remediation.guard import Guard

    name = module_leftovers.pool(f"once-{uuid.uuid4().hex[:6]}")
    Guard(load_route("PlanflowWorkPoolNotReady"), shared=True).update(f"failover:{name}", paused=True)
    with get_client(sync_client=True) as client:
        client.update_work_pool(name, WorkPoolUpdate(is_paused=True))
        first = failover(_alert(name, "resolved"))
        second = failover(_alert(name, "resolved"))
        assert first["outcome"] == second["outcome"] == "skipped", (first, second)
        assert first["next_check"] and second["next_check"] == first["next_check"], (first, second)
        runs = [
            r
            for r in client.read_flow_runs(limit=200)
            if "recheck" in r.tags and r.parameters.get("alert", {}).get("work_pool") == name
        ]
        assert len(runs) == 1, runs


def test_a_paused_pool_is_re_checked_a_handful_of_times_in_its_first_minutes():
    from planflow.remediation.failover import RECHECKS, recheck_delay

    elapsed, early = 0.0, 0
    for recheck in range(RECHECKS):
        elapsed += recheck_delay(recheck)
        early += elapsed <= 240
    assert early <= 7, early  # was 10 per chain, and one chain per resolved alert
    assert 20 * 3600 < elapsed < 30 * 3600, elapsed  # still about a day before a person is needed


def _failure_alert(pool: str) -> AlertEvent:
    return AlertEvent(
        event_id=uuid.uuid4(),
        event="planflow.alert.firing",
        resource_id=f"prefect.work-pool.{pool}",
        labels={"alertname": "PlanflowPoolFailureRateHigh", "work_pool": pool, "severity": "warning"},
    )


def _failed_runs(client, deployment, count: int, tags: list[str] | None = None) -> None:
    """`count` runs of `deployment` that failed (set so by hand: no worker runs them)."""
    from prefect.states import Failed

    for _ in range(count):
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"seed": 5}, tags=tags)
        client.set_flow_run_state(run.id, Failed(message="injected: the runs' code fails"), force=True)


def test_a_failure_rate_alert_acts_only_where_the_pool_is_what_fails_the_runs(module_leftovers):
    """A failure-rate alert paused a pool with no backup ("paused only", its healthy work
    stopped), acted on an alert no failed run bore out, and, for runs whose own code failed,
    failed over, then paused the backup too when they failed there."""
    from prefect.client.orchestration import get_client

    from planflow.prefect.reserved import OOM_KILLED_TAG
    from planflow.remediation.failover import failover
    from planflow.remediation.scenarios import deploy_flow

    from tests.remediation.conftest import FLAKY_ENTRY
    from tests.remediation.fixtures.flaky_pipeline import remediation_flaky

    alone = module_leftovers.pool(f"fr-alone-{uuid.uuid4().hex[:6]}")
    pool = module_leftovers.pool(f"fr-{uuid.uuid4().hex[:6]}", backup_pool="local")
    other = module_leftovers.pool(f"fr-other-{uuid.uuid4().hex[:6]}")
    flow = remediation_flaky.with_options(name=f"failing-{uuid.uuid4().hex[:6]}")  # its runs: only this test's
    with get_client(sync_client=True) as client:
        no_backup = failover(_failure_alert(alone))
        assert no_backup["outcome"] == "skipped" and "has no backup pool" in no_backup["reason"], no_backup
        assert not client.read_work_pool(alone).is_paused

        unfounded = failover(_failure_alert(pool))  # no run failed there: stale, or not Prometheus's
        assert unfounded["outcome"] == "skipped" and "no flow run failed or crashed there" in unfounded["reason"]
        assert not client.read_work_pool(pool).is_paused

        # components killed for memory (their parents ran them again with more): not the pool's failures
        killed = remediation_flaky.with_options(name=f"oom-killed-{uuid.uuid4().hex[:6]}")
        on_pool = deploy_flow(killed, FLAKY_ENTRY, f"oom-on-{pool}", pool, ["planflow"])
        _failed_runs(client, on_pool, 3, [OOM_KILLED_TAG])
        memory = failover(_failure_alert(pool))
        assert memory["outcome"] == "skipped" and "no flow run failed or crashed there" in memory["reason"], memory
        assert not client.read_work_pool(pool).is_paused

        _failed_runs(client, deploy_flow(flow, FLAKY_ENTRY, f"on-{other}", other, ["planflow"]), 2)
        _failed_runs(client, deploy_flow(flow, FLAKY_ENTRY, f"on-{pool}", pool, ["planflow"]), 3)
        code = failover(_failure_alert(pool))  # the same flow fails on `other` as well
        assert code["outcome"] == "skipped" and "fail on other pools too" in code["reason"], code
        assert other in code["reason"] and not client.read_work_pool(pool).is_paused

        mine = module_leftovers.pool(f"fr-own-{uuid.uuid4().hex[:6]}", backup_pool="local")
        own = remediation_flaky.with_options(name=f"failing-here-{uuid.uuid4().hex[:6]}")
        _failed_runs(client, deploy_flow(own, FLAKY_ENTRY, f"on-{mine}", mine, ["planflow"]), 3)
        pool_fault = failover(_failure_alert(mine))  # fails on this pool alone: failed over
        assert pool_fault["outcome"] == "succeeded" and client.read_work_pool(mine).is_paused, pool_fault
        # no check from the pause: its workers stay live, and a check 15 s later resumed it
        assert pool_fault["next_check"] is None, pool_fault


def test_a_worker_counts_as_back_only_for_a_heartbeat_after_the_alert(process_pool_worker):
    """A worker that stopped beating still counted as live for three of its intervals
    (90 s), longer than the fast profile's 45 s: the failover said "recovered" and did
    nothing. It now asks for a beat after the alert's event."""
    from datetime import UTC, datetime, timedelta

    from prefect.client.orchestration import get_client

    from planflow.remediation.pools import live_workers

    with get_client(sync_client=True) as client:
        live = wait_until(lambda: live_workers(client, "local-process"), 60, what="the process worker's heartbeat")
        assert live_workers(client, "local-process", since=datetime.now(UTC) - timedelta(hours=1)) == live
        assert live_workers(client, "local-process", since=datetime.now(UTC) + timedelta(minutes=5)) == []
