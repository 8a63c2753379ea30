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

from planflow.remediation.alert import AlertEvent
from planflow.remediation.audit import audited
from planflow.remediation.failure_check import FAILURE_ALERT, not_the_pool
from planflow.remediation.moves import move_all, stranded_reason
from planflow.remediation.names import FAILOVER_FLOW
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
        # a worker that beat since the pause: a dead one still counts as live for three of
        # its intervals (90 s), and a check 15 s after the pause resumed the pool for it
        paused_at = ledger.get("paused_at")
        workers = live_workers(client, pool, since=dt.datetime.fromisoformat(paused_at) if paused_at else None)
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
        return _move_sent_since(client, alert, {"recheck": recheck, "next_check": planned})
    client.update_work_pool(pool, WorkPoolUpdate(is_paused=False))
    audit.note(f"resumed work pool {pool} (paused by failover at {ledger.get('paused_at')})")
    audit.emit("action", what="resume-work-pool", work_pool=pool)
    guard.reset(key)
    return audit.finish("succeeded", f"alert {alert.alertname} resolved: pool {pool} resumed", {"resumed": pool}, route)


def _move_sent_since(client: SyncPrefectClient, alert: PoolAlert, details: dict[str, Any]) -> dict[str, Any]:
    """A re-check of a pool the failover paused, no worker back yet: move the runs sent to
    it since and due by now (a schedule, `prefect deployment run`; those not due yet wait
    for their time, or a schedule's future runs would be started now, at every check) to
    the backup pool (each once, however many checks run at once: moves.py). Not
    to a backup that is paused itself (two pools backing each other up bounced the runs
    between them). A run that cannot move is reported once ("failed"), not at every check."""
    audit, guard, key, pool, route = alert.audit, alert.guard, alert.key, alert.pool, alert.route
    due = stuck_runs(client, pool, due_only=True)
    if not due:
        return audit.finish("skipped", f"{pool} has no live worker yet", details, route)
    found = backup_of(pool)
    backup = found[2]
    if backup is None:
        audit.note(f"{pool} has no backup pool: the runs sent to it wait until it is resumed")
        return audit.finish("skipped", f"{pool} has no live worker yet, and no backup pool", details, route)
    if client.read_work_pool(backup.work_pool).is_paused:
        why = f"its backup pool's work pool {backup.work_pool} is paused too: the runs sent to {pool} wait"
        audit.note(why)
        return audit.finish("skipped", f"{pool} has no live worker yet; {why}", details, route)
    details |= move_all(client, alert, due, found, dry=False)
    reported = set(guard.ledger(key).get("kept_reported", []))
    new = [i for i in details["kept_ids"] if i not in reported]
    if new:
        guard.update(key, kept_reported=sorted(reported | set(new)))
    stranded = stranded_reason(alert, details) if new else ""
    moved = len(details["resubmitted"])
    reason = f"{pool} has no live worker yet: stays paused; " + (
        stranded or f"{moved} run(s) sent to it since moved to {backup.work_pool}"
    )
    if not stranded and not moved:
        return audit.finish("skipped", reason + f" ({len(details['kept'])} kept, said before)", details, route)
    return audit.finish("failed" if stranded else "succeeded", reason, details, route)


def _check_from_the_pause(alert: PoolAlert) -> str | None:
    """A worker alert paused the pool: check it again from now on, not only once the
    alert resolves (a PlanflowWorkerHeartbeatStale does not resolve while the pool has no
    worker, and the runs sent to it meanwhile waited): resumed once a worker beats again,
    runs sent to it moved. (Not for a failure-rate pause: its workers are live, and only
    the resolved alert may resume it.) A failure to schedule it is said, not raised: the
    pause and the moves are done, and the resolved alert checks too."""
    try:
        planned = alert.check_again(recheck_delay(0), 1)
    except Exception as exc:  # noqa: BLE001 - see above
        alert.audit.note(f"no re-check of {alert.pool} scheduled ({exc!r}): the resolved alert checks it")
        return None
    if planned:
        alert.audit.note(f"checking {alert.pool} again at {planned}: resumed once a worker beats again")
    return planned


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
    # `back`, not `live`: for a worker alert, a worker whose last beat came before it is
    # the one it reports gone (a worker stopped a moment ago counted as live, and a pool
    # with no backup and nothing waiting was paused: the rescale's scaled-back pool, the
    # backup of another pool)
    if backup is None and not stuck and not back:
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
    planned = None
    if dry:
        audit.note(f"dry run: would pause work pool {pool}")
    else:
        client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
        guard.update(key, paused=True, paused_at=dt.datetime.now(dt.UTC).isoformat())
        audit.note(f"paused work pool {pool}: no new run starts there until a worker is back (or the alert resolves)")
        audit.emit("action", what="pause-work-pool", work_pool=pool)
    details = move_all(client, alert, stuck, (source_name, backup_name, backup), dry)
    if worker_alert and not dry:
        planned = _check_from_the_pause(alert)
    details["next_check"] = planned
    stranded = stranded_reason(alert, details)
    if details["kept_ids"] and not dry:  # said now: the re-checks do not say them again
        guard.update(key, kept_reported=details["kept_ids"])
    reason = f"{alert.alertname} on {pool}: {decision.reason}" + (f"; {stranded}" if stranded else "")
    outcome = "dry_run" if dry else ("failed" if stranded else "succeeded")
    return audit.finish(outcome, reason, details, route)
