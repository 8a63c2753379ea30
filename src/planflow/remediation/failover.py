"""The failover remediation: an unhealthy pool's waiting runs move to its backup pool.

On a pool-unhealthy alert (PlanflowWorkPoolNotReady, PlanflowWorkerHeartbeatStale,
PlanflowPoolFailureRateHigh), `planflow-failover/remediation`:

1. pauses the work pool (no new run starts there until the alert resolves);
2. cancels its stuck runs (Scheduled, Late, Pending), re-plans their pipelines onto the
   ResourcePool's `backup_pool` (its capacities) and resubmits them on the backup pool's
   deployment of the same flow;
3. on the matching resolved alert, resumes the pool, only if failover paused it and a
   worker serves it again (else checks again later, bounded).

One failover per pool, whichever of the alerts fired: the guard's ledger is shared.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.client.schemas.filters import (
    DeploymentFilter,
    FlowFilter,
    FlowFilterId,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.states import Cancelled

from planflow.prefect.blocks.resource_pool import ResourcePool
from planflow.prefect.jobvars import job_variables
from planflow.remediation.alert import AlertEvent
from planflow.remediation.audit import audited
from planflow.remediation.failure_check import FAILURE_ALERT, not_the_pool
from planflow.remediation.names import FAILOVER_FLOW
from planflow.remediation.planning import replan_on_backup
from planflow.remediation.pool_alert import PoolAlert, open_pool_alert
from planflow.remediation.pools import backup_of, has_had_workers, live_workers, pool_status, stuck_runs

# Alerts that say "no worker serves this pool" (as opposed to "its runs fail").
WORKER_ALERTS = ("PlanflowWorkPoolNotReady", "PlanflowWorkerHeartbeatStale")
# A pool paused by failover whose alert resolved with no worker back is checked again
# every 15 s for a minute, then 30, 60, ... at most 10 min apart, for about a day (then
# a person resumes it): a handful of re-check runs in the first minutes, not dozens.
# One re-check per pool waits at a time (pool_alert.schedule_again).
RECHECKS = 150
RECHECK_SECONDS = 15.0
RECHECK_MAX_SECONDS = 600.0
FAST_RECHECKS = 4


def recheck_delay(recheck: int) -> float:
    """Seconds until re-check number `recheck` + 1 of a paused pool."""
    if recheck < FAST_RECHECKS:
        return RECHECK_SECONDS
    return min(RECHECK_MAX_SECONDS, RECHECK_SECONDS * 2 ** min(recheck - FAST_RECHECKS + 1, 10))


@flow(name=FAILOVER_FLOW, log_prints=True, retries=0)
@audited
def failover(alert: AlertEvent) -> dict[str, Any]:
    """Firing: pause the pool, cancel its stuck runs, resubmit them on the backup pool.
    Resolved: resume the pool if failover paused it and a worker serves it again (else
    check again later, up to RECHECKS times)."""
    pool_alert, skipped = open_pool_alert("failover", FAILOVER_FLOW, "PlanflowWorkPoolNotReady", alert, shared=True)
    if skipped is not None:
        return skipped
    with get_client(sync_client=True) as client:
        if pool_alert.status == "resolved":
            return _resume(client, pool_alert)
        return _fail_over(client, pool_alert)


def _resume(client: SyncPrefectClient, alert: PoolAlert) -> dict[str, Any]:
    """The alert resolved: resume the pool if failover paused it and a worker is back."""
    audit, guard, key, pool, route = alert.audit, alert.guard, alert.key, alert.pool, alert.route
    ledger = guard.ledger(key)
    if route.dry_run:
        audit.note(f"dry run: would resume work pool {pool} (paused by failover: {bool(ledger.get('paused'))})")
        guard.reset(key)
        return audit.finish("dry_run", "alert resolved", {"ledger": ledger}, route)
    if not ledger.get("paused"):
        guard.reset(key)
        return audit.finish("skipped", f"alert resolved; failover had not paused {pool}", {"ledger": ledger}, route)
    try:
        workers = live_workers(client, pool)
        paused_now = client.read_work_pool(pool).is_paused
    except Exception as exc:  # noqa: BLE001 - the pool was deleted
        guard.reset(key)
        return audit.finish("skipped", f"alert resolved; pool {pool} is gone ({exc})", {}, route)
    if not paused_now:
        guard.reset(key)
        return audit.finish(
            "skipped", f"alert resolved; {pool} was already resumed (by hand)", {"ledger": ledger}, route
        )
    if not workers:
        # Pausing a pool that has no worker resolves "not ready" by itself: resume only
        # once a worker is back, checking again later (bounded). Runs sent to the paused
        # pool meanwhile (a schedule, `prefect deployment run`) would wait there: each
        # check moves them to the backup pool as the failover did.
        recheck = alert.recheck
        planned = None if recheck >= RECHECKS else alert.check_again(recheck_delay(recheck), recheck + 1)
        audit.note(
            f"alert resolved but {pool} has no live worker: stays paused; "
            + (f"checking again at {planned}" if planned else "no more re-checks")
        )
        details: dict[str, Any] = {"recheck": recheck, "next_check": planned}
        waiting = stuck_runs(client, pool)
        if not waiting:
            return audit.finish("skipped", f"{pool} has no live worker yet", details, route)
        details |= _move_all(client, alert, waiting, backup_of(pool), dry=False)
        stranded = _stranded(alert, details)
        reason = f"{pool} has no live worker yet: stays paused; " + (
            stranded or f"{len(details['resubmitted'])} run(s) sent to it since moved to {details['backup_work_pool']}"
        )
        return audit.finish("failed" if stranded else "succeeded", reason, details, route)
    client.update_work_pool(pool, WorkPoolUpdate(is_paused=False))
    audit.note(f"resumed work pool {pool} (paused by failover at {ledger.get('paused_at')})")
    audit.emit("action", what="resume-work-pool", work_pool=pool)
    guard.reset(key)
    return audit.finish("succeeded", f"alert {alert.alertname} resolved: pool {pool} resumed", {"resumed": pool}, route)


def _fail_over(client: SyncPrefectClient, alert: PoolAlert) -> dict[str, Any]:
    """The alert fired: pause the pool, move its waiting runs to the backup pool."""
    audit, guard, key, pool, route = alert.audit, alert.guard, alert.key, alert.pool, alert.route
    if guard.ledger(key).get("paused"):
        try:
            if not client.read_work_pool(pool).is_paused:  # resumed by hand: a new episode
                guard.reset(key)
        except Exception:  # noqa: BLE001 - the pool was deleted: the guard decides below
            pass
    source_name, backup_name, backup = backup_of(pool)
    if alert.alertname == FAILURE_ALERT and (why_not := not_the_pool(client, pool, backup_name)):
        audit.note(why_not)
        return audit.finish("skipped", why_not, {"work_pool": pool, "backup_pool": backup_name}, route)
    stuck = stuck_runs(client, pool)
    live = live_workers(client, pool)
    # a worker counts as back when it beat after the alert's event (a worker that had
    # stopped beating still counted as live for three of its intervals, 90 s, longer
    # than the fast profile's 45 s threshold: the failover said "recovered" and did nothing)
    since = alert.event.occurred_at
    worker_alert = alert.alertname in WORKER_ALERTS
    back = live_workers(client, pool, since=since) if worker_alert and live and since is not None else live
    if worker_alert and back and pool_status(client, pool) == "READY":
        # The alert was about a worker that is back by now (or a pool seen between its
        # creation and its worker's first heartbeat): nothing is unhealthy any more.
        audit.note(f"{pool} is READY with live worker(s) {', '.join(back)}: the alert is stale")
        return audit.finish(
            "skipped", f"{pool} recovered before the failover ran", {"work_pool": pool, "live_workers": back}, route
        )
    if worker_alert and not stuck and not live and not has_had_workers(client, pool):
        # a pool deployed to whose first worker is not started yet (`prefect deploy`, then
        # `planflow worker start`): paused, the runs sent to it next waited on a paused pool
        audit.note(
            f"nothing to fail over: {pool} has had no worker yet and no run waits on it "
            f"(its first worker: planflow worker start {pool})"
        )
        return audit.finish("skipped", f"{pool}: no worker yet, no waiting run", {"work_pool": pool}, route)
    if backup is None and not stuck and not live:
        # No worker to stop, no run to move, nowhere to move it: pausing would only
        # leave an unused pool paused until someone notices.
        audit.note(
            f"nothing to do: {pool} has no live worker, no waiting run and no backup pool "
            f"(set backup_pool on its ResourcePool block to fail it over)"
        )
        return audit.finish("skipped", f"{pool}: nothing to protect or move", {"work_pool": pool}, route)
    decision = guard.admit(key)
    if not decision.counted:
        audit.note(f"no failover: {decision.reason}")
        return audit.finish(decision.audit_outcome, decision.reason, {"decision": decision.outcome}, route)
    dry = decision.outcome == "dry_run"
    if dry:
        audit.note(f"dry run: would pause work pool {pool}")
    else:
        client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
        guard.update(key, paused=True, paused_at=dt.datetime.now(dt.UTC).isoformat())
        audit.note(f"paused work pool {pool}: no new run starts there until the alert resolves")
        audit.emit("action", what="pause-work-pool", work_pool=pool)
    details = _move_all(client, alert, stuck, (source_name, backup_name, backup), dry)
    stranded = _stranded(alert, details)
    reason = f"{alert.alertname} on {pool}: {decision.reason}" + (f"; {stranded}" if stranded else "")
    outcome = "dry_run" if dry else ("failed" if stranded else "succeeded")
    return audit.finish(outcome, reason, details, route)


def _move_all(
    client: SyncPrefectClient,
    alert: PoolAlert,
    runs: list[FlowRun],
    backup_of_pool: tuple[str | None, str | None, ResourcePool | None],
    dry: bool,
) -> dict[str, Any]:
    """Move each waiting run of the alert's pool to its backup pool (or say why it stays);
    `backup_of_pool` is `pools.backup_of(alert.pool)`."""
    source_name, backup_name, backup = backup_of_pool
    details: dict[str, Any] = {
        "work_pool": alert.pool,
        "resource_pool": source_name,
        "backup_pool": backup_name,
        "backup_work_pool": backup.work_pool if backup else None,
        "cancelled": [],
        "resubmitted": [],
        "kept": [],
        "replans": {},
    }
    for run in runs:
        _move(client, alert, run, backup_name, backup, dry, details)
    return details


def _stranded(alert: PoolAlert, details: dict[str, Any]) -> str:
    """Why runs that were to fail over did not ("": none stranded, notes written); the
    outcome is then "failed", so someone is told."""
    audit, pool = alert.audit, alert.pool
    source_name, backup_name, backup_work_pool = (
        details["resource_pool"],
        details["backup_pool"],
        details["backup_work_pool"],
    )
    stranded = ""
    if backup_work_pool is None and backup_name:
        missing = (
            f"its backup pool '{backup_name}' (ResourcePool {source_name!r}) does not exist: paused only, "
            f"{len(details['kept'])} waiting run(s) kept queued. Fix: planflow pools set {source_name} "
            "--backup-pool <an existing pool>, or create that pool"
        )
        if details["kept"]:
            stranded = missing
        else:
            audit.note(missing)
    elif backup_work_pool is None:
        audit.note(
            f"work pool {pool} has no backup pool (ResourcePool {source_name!r}): "
            "paused only, its waiting runs kept queued"
        )
    elif details["kept"]:
        stranded = (
            f"{len(details['kept'])} waiting run(s) could not move to {backup_work_pool} "
            f"({'; '.join(details['kept'])}). Fix: deploy those flows to work pool {backup_work_pool} "
            f"(prefect deploy ... --pool {backup_work_pool}), or resume {pool} once its workers are back"
        )
    if stranded:
        audit.note(stranded)
    return stranded


def _move(
    client: SyncPrefectClient,
    alert: PoolAlert,
    run: FlowRun,
    backup_name: str | None,
    backup: ResourcePool | None,
    dry: bool,
    details: dict[str, Any],
) -> None:
    """Cancel one waiting run and resubmit it on the backup pool, or say why it stays."""
    audit, pool = alert.audit, alert.pool
    audit.affected.append(str(run.id))
    target, flow_name, why = None, "", ""
    if "component" in run.tags:
        why = "a component run: cancelled; its pipeline run fails and is retried, re-planned on ready pools"
    elif backup is None:
        why = "no backup pool: kept queued, it starts when the pool is resumed"
    elif run.deployment_id is None:
        why = "not from a deployment: kept queued"
    else:
        flow_name = client.read_flow(run.flow_id).name
        target = _equivalent_deployment(client, run.flow_id, backup.work_pool)
        if target is None:
            why = f"flow {flow_name} has no deployment on {backup.work_pool}: kept queued"
    if target is None and "component" not in run.tags:
        details["kept"].append(f"{run.name}: {why}")
        audit.note(f"{run.name} ({run.state.name}): {why}")
        return
    if dry:
        audit.note(
            f"dry run: would cancel {run.name} ({run.state.name})"
            + (f" and resubmit it on {backup.work_pool}" if target else f" ({why})")
        )
        details["cancelled"].append(run.name)
        return
    client.set_flow_run_state(
        run.id,
        Cancelled(
            message=(
                f"planflow failover: work pool {pool} is unhealthy ({alert.alertname}); "
                + (f"resubmitted on {backup.work_pool}" if target else why)
            )
        ),
        force=True,
    )
    audit.note(f"cancelled {run.name} ({run.state.name}) on {pool}" + ("" if target else f": {why}"))
    audit.emit("action", what="cancel-flow-run", flow_run_id=str(run.id))
    details["cancelled"].append(run.name)
    if target is None:
        return
    if flow_name not in details["replans"]:
        details["replans"][flow_name] = replan_on_backup(flow_name, backup_name, backup)
    parameters = dict(run.parameters or {})
    properties = (target.parameter_openapi_schema or {}).get("properties") or {}
    if "local_pool" in properties or (not properties and "planflow" in run.tags):
        parameters["local_pool"] = backup_name  # plan with the backup pool's capacities
    new = client.create_flow_run_from_deployment(
        target.id,
        parameters=parameters,
        job_variables=_backup_job_variables(client, backup),
        tags=[*(t for t in run.tags if t not in ("docker", "kubernetes")), "failover"],
        name=f"{run.name}-failover",
    )
    audit.affected.append(str(new.id))
    details["resubmitted"].append(
        {
            "from": run.name,
            "flow_run_id": str(new.id),
            "deployment": f"{flow_name}/{target.name}",
            "work_pool": backup.work_pool,
        }
    )
    audit.note(
        f"resubmitted {run.name} as {new.name} ({flow_name}/{target.name}) on "
        f"{backup.work_pool}, planned with pool '{backup_name}' "
        f"({details['replans'][flow_name].get('makespan_s', '?')} s makespan)"
    )
    audit.emit(
        "action", what="resubmit", from_flow_run_id=str(run.id), flow_run_id=str(new.id), work_pool=backup.work_pool
    )


def _equivalent_deployment(client: SyncPrefectClient, flow_id: Any, work_pool: str) -> DeploymentResponse | None:
    """A deployment of the same flow on `work_pool` (the first by name), or None."""
    found = client.read_deployments(
        flow_filter=FlowFilter(id=FlowFilterId(any_=[flow_id])),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[work_pool])),
        deployment_filter=DeploymentFilter(),
        limit=10,
    )
    return sorted(found, key=lambda d: d.name)[0] if found else None


def _backup_job_variables(client: SyncPrefectClient, backup: ResourcePool) -> dict[str, Any]:
    """Job variables sized to the backup pool (e.g. a Kubernetes pod's requests)."""
    try:
        kind = client.read_work_pool(backup.work_pool).type
        return job_variables(kind, cpu=backup.cpu, gpu=backup.gpu, mem_gib=backup.mem_gib, gpu_pool=backup.gpu > 0)
    except Exception:  # noqa: BLE001 - plain job variables are still a valid resubmission
        return {}
