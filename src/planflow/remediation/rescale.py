"""The rescale remediation: a pool with a late-run backlog gets more workers, and loses
them again once the backlog is gone.

On PlanflowLateRunBacklog, `planflow-rescale/remediation` asks the planner what more
workers buy (the backlog's makespan with n, n+1, ... worker slots), raises the pool's
(and queue's) concurrency limit and adds workers (scaling.py: processes, or the
Kubernetes worker Deployment's replicas), within the route's min/max. On resolved (or a
re-check), it restores the limits at once and stops each added worker once idle.

A paused pool, or one with no live worker and a backup pool, is left to the failover:
two remediations must not race for the same waiting runs.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolUpdate

from planflow.remediation.alert import AlertEvent
from planflow.remediation.audit import audited
from planflow.remediation.names import RESCALE_FLOW
from planflow.remediation.planning import backlog_curve, estimate_seconds, workers_to_reach
from planflow.remediation.pool_alert import PoolAlert, open_pool_alert
from planflow.remediation.pools import backup_of, live_workers, stuck_runs
from planflow.remediation.scaling import current_replicas, scale_in, scale_out

SCALE_DOWN_RECHECK_SECONDS = 10.0
SCALE_DOWN_RECHECKS = 360  # an hour of 10 s checks for a worker to finish its flow runs


@flow(name=RESCALE_FLOW, log_prints=True, retries=0)
@audited
def rescale(alert: AlertEvent) -> dict[str, Any]:
    """Firing: if the planner says one more worker shortens the backlog, raise the pool's
    (and queue's) concurrency limit and start a worker, within the route's bounds.
    Resolved: stop the workers it started and restore the limits."""
    pool_alert, skipped = open_pool_alert("rescale", RESCALE_FLOW, "PlanflowLateRunBacklog", alert)
    if skipped is not None:
        return skipped
    with get_client(sync_client=True) as client:
        if pool_alert.status == "resolved":
            return _scale_down(client, pool_alert)
        return _scale_up(client, pool_alert)


def _scale_up(client: SyncPrefectClient, alert: PoolAlert) -> dict[str, Any]:
    audit, guard, key, pool, route = alert.audit, alert.guard, alert.key, alert.pool, alert.route
    queue = alert.event.queue
    pool_obj = client.read_work_pool(pool)
    live = live_workers(client, pool)
    if pool_obj.type == "kubernetes":  # the workers are the Deployment's replicas
        live = live + [f"replica-{i}" for i in range(len(live), current_replicas(route))]
    started = list(guard.ledger(key).get("workers", []))
    backlog = stuck_runs(client, pool)
    audit.affected.extend(str(r.id) for r in backlog)
    estimates = [estimate_seconds(client, r) for r in backlog]
    n = max(len(live), 1)
    curve = backlog_curve(estimates, range(n, max(n + 1, route.max_workers) + 1))
    target = max(workers_to_reach(curve), route.min_workers)
    gain = curve[n] - curve[n + 1]
    details: dict[str, Any] = {
        "work_pool": pool,
        "work_queue": queue,
        "live_workers": live,
        "backlog_runs": len(backlog),
        "backlog_estimates_s": estimates,
        "makespan_with_n_s": curve[n],
        "makespan_with_n_plus_1_s": curve[n + 1],
        "makespan_by_workers_s": {str(k): round(v, 2) for k, v in curve.items()},
        "target_workers": target,
        "n": n,
        "gain_s": gain,
        "min_workers": route.min_workers,
        "max_workers": route.max_workers,
    }
    audit.note(
        f"{len(backlog)} run(s) wait on {pool} with {len(live)} live worker(s); the planner "
        "says the backlog takes "
        + ", ".join(f"{v:.1f} s with {k}" for k, v in curve.items())
        + f" worker(s): one more buys {gain:.1f} s; {target} is enough (within 5 % of the best)"
    )
    if pool_obj.is_paused:
        audit.note(f"not scaled: {pool} is paused (failed over, or by hand)")
        return audit.finish("skipped", f"{pool} is paused", details, route)
    if not live and backup_of(pool)[2] is not None:
        # No worker serves the pool and it has a backup: the failover moves its runs
        # (PlanflowWorkPoolNotReady); a worker started here would race it for them.
        audit.note(f"not scaled: {pool} has no live worker and a backup pool: the failover answers it")
        return audit.finish("skipped", f"{pool} has no live worker; its backup pool takes its runs", details, route)
    if len(live) >= route.max_workers:
        audit.note(f"not scaled: {len(live)} worker(s) already, max_workers={route.max_workers}")
        return audit.finish("skipped", f"at max_workers ({route.max_workers})", details, route)
    if target <= len(live):
        audit.note("not scaled: more workers would not finish the backlog sooner")
        return audit.finish("skipped", "no makespan gain from another worker", details, route)
    decision = guard.admit(key)
    details["decision"] = decision.outcome
    if not decision.counted:
        audit.note(f"not scaled: {decision.reason}")
        return audit.finish(decision.audit_outcome, decision.reason, details, route)
    want = min(target, route.max_workers) - len(live)
    limit = pool_obj.concurrency_limit
    new_limit = None if limit is None else min(route.max_concurrency or limit + want, limit + want)
    if decision.outcome == "dry_run":
        audit.note(f"dry run: would set {pool} concurrency {limit} -> {new_limit} and start {want} worker(s)")
        details.update(would_start=want, would_limit=new_limit)
        return audit.finish("dry_run", decision.reason, details, route)
    # What to undo is recorded before it is done, and `scaling` tells a scale-down
    # that runs meanwhile (the alert may resolve within seconds once the limit is
    # raised) to check again later instead of finding nothing to undo.
    guard.update(key, defaults={"pool_limit_before": limit}, queue=queue or None, scaling=True)
    if new_limit is not None and new_limit != limit:
        client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=new_limit))
        audit.note(f"work pool {pool} concurrency limit {limit} -> {new_limit}")
        audit.emit("action", what="raise-pool-concurrency", before=limit, after=new_limit)
    if queue:
        _raise_queue_limit(client, alert, queue, want)
    try:
        for worker in scale_out(pool, pool_obj.type, want, route):
            started.append(worker)
            guard.update(key, workers=started)
            audit.note(f"started {worker['kind']} worker {worker['name']} for {pool}")
            audit.emit("action", what="start-worker", **worker)
    finally:
        guard.update(key, workers=started, scaling=False)
    # Scale back once the backlog is gone, even if no resolved alert ever arrives
    # (an alert that resolves while this flow runs has already been answered).
    details["scale_down_check"] = alert.check_again(SCALE_DOWN_RECHECK_SECONDS * 3, 1)
    details.update(started=[w["name"] for w in started], pool_limit=new_limit)
    return audit.finish("succeeded", f"{alert.alertname} on {pool}: {decision.reason}", details, route)


def _raise_queue_limit(client: SyncPrefectClient, alert: PoolAlert, queue: str, want: int) -> None:
    audit, route = alert.audit, alert.route
    try:
        q = client.read_work_queue_by_name(queue, work_pool_name=alert.pool)
        if q.concurrency_limit is None:
            return
        alert.guard.update(alert.key, defaults={"queue_limit_before": q.concurrency_limit})
        q_new = min(route.max_concurrency or q.concurrency_limit + want, q.concurrency_limit + want)
        client.update_work_queue(q.id, concurrency_limit=q_new)
        audit.note(f"work queue {queue} concurrency limit {q.concurrency_limit} -> {q_new}")
    except Exception as exc:  # noqa: BLE001 - the pool's limit is what counts
        audit.note(f"work queue {queue}: not changed ({exc})")


def _scale_down(client: SyncPrefectClient, alert: PoolAlert) -> dict[str, Any]:
    """Resolved: restore the limits at once (no new run beyond the old capacity starts),
    stop each started worker that is idle, and check again later for the busy ones (a
    worker's flow runs are its child processes: stopping it would crash them)."""
    audit, guard, key, pool, route = alert.audit, alert.guard, alert.key, alert.pool, alert.route
    recheck = alert.recheck
    ledger = guard.ledger(key)
    if route.dry_run:
        audit.note(f"dry run: would stop {len(ledger.get('workers', []))} worker(s) and restore limits")
        guard.reset(key)
        return audit.finish("dry_run", "alert resolved", {"ledger": ledger}, route)
    if not ledger or not (ledger.get("workers") or "pool_limit_before" in ledger):
        return audit.finish("skipped", "alert resolved; nothing had been scaled", {}, route)
    backlog = stuck_runs(client, pool)
    if ledger.get("scaling") or backlog:
        why = (
            "the rescale that answered the alert is still acting"
            if ledger.get("scaling")
            else f"{len(backlog)} run(s) still wait on {pool}"
        )
        if recheck >= SCALE_DOWN_RECHECKS:
            return audit.finish("skipped", f"not scaled down: {why}; no more checks", {}, route)
        when = alert.check_again(SCALE_DOWN_RECHECK_SECONDS, recheck + 1)
        audit.note(f"not scaled down yet: {why}; checking again at {when}")
        return audit.finish("skipped", f"not scaled down yet: {why}", {"next_check": when}, route)
    if "pool_limit_before" in ledger and not ledger.get("limits_restored"):
        _restore_limits(client, alert, ledger)
    stopped, waiting = [], []
    for worker in ledger.get("workers", []):
        state, what = scale_in(worker)
        if state == "stopped":
            stopped.append(worker["name"])
            audit.note(what)
        elif state == "busy":
            waiting.append(worker)
    details: dict[str, Any] = {"stopped": stopped, "still_busy": [w["name"] for w in waiting]}
    if stopped:
        audit.emit("action", what="scale-down", stopped=stopped)
    if waiting and recheck < SCALE_DOWN_RECHECKS:
        guard.update(key, workers=waiting, limits_restored=True)
        details["next_check"] = alert.check_again(SCALE_DOWN_RECHECK_SECONDS, recheck + 1)
        audit.note(f"{len(waiting)} worker(s) still run flow runs: checking again at {details['next_check']}")
        return audit.finish(
            "succeeded",
            f"alert {alert.alertname} resolved: limits restored, "
            f"{len(stopped)} worker(s) stopped, {len(waiting)} finishing their runs",
            details,
            route,
        )
    guard.reset(key)
    return audit.finish(
        "succeeded",
        f"alert {alert.alertname} resolved: scaled {pool} back down ({len(stopped)} worker(s) stopped)",
        details,
        route,
    )


def _restore_limits(client: SyncPrefectClient, alert: PoolAlert, ledger: dict[str, Any]) -> None:
    audit, pool = alert.audit, alert.pool
    client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=ledger["pool_limit_before"]))
    audit.note(f"work pool {pool} concurrency limit back to {ledger['pool_limit_before']}")
    if ledger.get("queue") and "queue_limit_before" in ledger:
        q = client.read_work_queue_by_name(ledger["queue"], work_pool_name=pool)
        client.update_work_queue(q.id, concurrency_limit=ledger["queue_limit_before"])
        audit.note(f"work queue {ledger['queue']} concurrency limit back to {ledger['queue_limit_before']}")
    audit.emit("action", what="restore-limits", work_pool=pool, limit=ledger["pool_limit_before"])
