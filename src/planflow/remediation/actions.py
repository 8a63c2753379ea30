"""The flows that planflow's automations start: retry, failover, rescale.

Each is a Prefect flow with a deployment on the `planflow-remediation` process pool
(monitoring/automations.py creates both), so that a paused or broken pipeline pool
never blocks its own remediation. Every one:

1. reads its AlertRoute block (blocks/alert_route.py) and asks the Guard whether it may
   act now (attempt cap, cooldown, rate limit, dry run; the ledger is durable);
2. acts, or records what it would have done (dry run) or why it did nothing;
3. leaves an audit trail: Prefect events `planflow.remediation.started|action|outcome`
   related to the alert's event id and the affected flow runs / work pool, the counter
   `planflow_remediations_total{action,outcome}` on the Pushgateway, and a markdown
   artifact saying what happened and why.

- `retry_run`: a failed or crashed pipeline flow run (from a deployment) is set back to
  Scheduled ("AwaitingRetry", after a backoff) so that a worker runs the SAME flow run
  again: its components' cache keys are scoped to the flow run id, so the components
  that finished are read back (state Cached), not recomputed.
- `failover`: on a pool-unhealthy alert: pause the work pool, cancel its stuck runs
  (Scheduled, Late, Pending), re-plan their pipelines onto the ResourcePool's
  `backup_pool` (its capacities) and resubmit them on the backup pool's deployment of
  the same flow; on the matching resolved alert, resume the pool (only if failover
  paused it).
- `rescale`: on a late-run backlog: ask the planner what one more worker buys (makespan
  of the backlog with n and n+1 worker slots), raise the pool's (and queue's)
  concurrency limit and start a worker process, within the route's min/max; on resolved,
  stop the workers it started and restore the limits.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.events import emit_event

from planflow.prefect.blocks.alert_route import FLOW_RUN_FAILED, AlertRoute, Decision, Guard, load_route

REMEDIATION_TAG = "planflow-remediation"
PUSH_JOB = "planflow-remediation"
ROOT = Path(__file__).resolve().parents[1]
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# -- the audit trail ------------------------------------------------------------------
def _current_flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


def push_remediation_count(action: str, outcome: str, url: str | None = None) -> bool:
    """Add one to planflow_remediations_total{action,outcome} on the Pushgateway.

    Remediations run in short-lived processes, so the counter lives in one Pushgateway
    group (job `planflow-remediation`): read its current values, add one, push the group
    back, under the guard's server-side lock so that two remediations do not lose an
    increment. Never raises; False when nothing was pushed."""
    import httpx
    from prometheus_client import CollectorRegistry, push_to_gateway
    from prometheus_client.parser import text_string_to_metric_families

    from planflow.monitoring.metrics import RemediationMetrics, pushgateway_url_from_env

    url = url or pushgateway_url_from_env()
    if not url:
        return False

    def update() -> None:
        current: dict[tuple[str, str], float] = {}
        text = httpx.get(f"{url.rstrip('/')}/metrics", timeout=3).text
        for family in text_string_to_metric_families(text):
            if family.name != "planflow_remediations":
                continue
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("job") == PUSH_JOB:
                    current[(sample.labels["action"], sample.labels["outcome"])] = sample.value
        current[(action, outcome)] = current.get((action, outcome), 0.0) + 1
        registry = CollectorRegistry()
        metrics = RemediationMetrics(registry)
        for (a, o), value in current.items():
            metrics.remediations.labels(a, o).inc(value)
        push_to_gateway(url, job=PUSH_JOB, registry=registry, timeout=3)

    try:
        try:
            Guard.ensure_lock()
            lock = Guard(AlertRoute(alertname="metrics"))._locked()
        except Exception:  # noqa: BLE001
            lock = None
        if lock is None:
            update()
        else:
            with lock:
                update()
        return True
    except Exception as exc:  # noqa: BLE001 - monitoring never fails a remediation
        import logging

        logging.getLogger("planflow.remediation").warning("could not push remediation count: %r", exc)
        return False


def alert_latency_seconds(occurred: str) -> float | None:
    """Seconds from the triggering event (ISO time, as the automation renders
    `event.occurred`) to now; None when it cannot be read."""
    try:
        when = dt.datetime.fromisoformat(occurred.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (dt.datetime.now(dt.UTC) - when).total_seconds())


def push_remediation_latency(action: str, seconds: float, url: str | None = None) -> bool:
    """Set planflow_remediation_alert_latency_seconds{action} on the Pushgateway (its own
    group per action, job `planflow-remediation-latency`). Never raises."""
    from prometheus_client import CollectorRegistry, pushadd_to_gateway

    from planflow.monitoring.metrics import RemediationMetrics, pushgateway_url_from_env

    url = url or pushgateway_url_from_env()
    if not url:
        return False
    try:
        registry = CollectorRegistry()
        RemediationMetrics(registry).alert_latency.labels(action).set(seconds)
        pushadd_to_gateway(
            url, job=f"{PUSH_JOB}-latency", grouping_key={"action": action}, registry=registry, timeout=3
        )
        return True
    except Exception as exc:  # noqa: BLE001 - monitoring never fails a remediation
        import logging

        logging.getLogger("planflow.remediation").warning("could not push remediation latency: %r", exc)
        return False


_current_audit: contextvars.ContextVar[Audit | None] = contextvars.ContextVar("planflow_audit", default=None)


def audited(fn):
    """A remediation whose code raises still ends its audit trail: outcome "failed"."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        token = _current_audit.set(None)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            audit = _current_audit.get()
            if audit is not None and not audit.finished:
                audit.note(f"the remediation failed: {type(exc).__name__}: {exc}")
                audit.finish("failed", f"{type(exc).__name__}: {exc}"[:300])
            raise
        finally:
            _current_audit.reset(token)

    return wrapper


class Audit:
    """The events, metric and artifact of one remediation."""

    def __init__(
        self, action: str, alertname: str, event_id: str = "", subject: str = "", event_occurred: str = ""
    ) -> None:
        _current_audit.set(self)
        self.event_occurred = event_occurred
        self.finished = False
        self.action = action
        self.alertname = alertname
        self.event_id = event_id
        self.subject = subject
        self.flow_run_id = _current_flow_run_id()
        self.lines: list[str] = []
        self.affected: list[str] = []  # flow run ids
        self.work_pools: list[str] = []
        self.events: list[str] = []

    def _resource(self) -> dict[str, str]:
        return {
            "prefect.resource.id": f"planflow.remediation.{self.action}.{self.flow_run_id or uuid.uuid4()}",
            "prefect.resource.name": f"{self.action} {self.subject}".strip(),
            "planflow.remediation.action": self.action,
            "planflow.alert.name": self.alertname,
        }

    def _related(self) -> list[dict[str, str]]:
        related = []
        if self.event_id:
            related.append(
                {"prefect.resource.id": f"prefect.event.{self.event_id}", "prefect.resource.role": "triggering-event"}
            )
        if self.flow_run_id:
            related.append(
                {
                    "prefect.resource.id": f"prefect.flow-run.{self.flow_run_id}",
                    "prefect.resource.role": "remediation-flow-run",
                }
            )
        for run in dict.fromkeys(self.affected):
            related.append(
                {"prefect.resource.id": f"prefect.flow-run.{run}", "prefect.resource.role": "affected-flow-run"}
            )
        for pool in dict.fromkeys(self.work_pools):
            related.append(
                {
                    "prefect.resource.id": f"prefect.work-pool.{pool}",
                    "prefect.resource.role": "work-pool",
                    "prefect.resource.name": pool,
                }
            )
        related.append(
            {"prefect.resource.id": f"planflow.alert-rule.{self.alertname}", "prefect.resource.role": "alert-rule"}
        )
        return related

    def emit(self, phase: str, **payload: Any) -> None:
        if phase == "started" and self.event_occurred:
            latency = alert_latency_seconds(self.event_occurred)
            if latency is not None:
                payload["seconds_since_trigger"] = round(latency, 3)
                push_remediation_latency(self.action, latency)
        event = emit_event(
            f"planflow.remediation.{phase}",
            resource=self._resource(),
            related=self._related(),
            payload={"action": self.action, "alertname": self.alertname, "alert_event_id": self.event_id, **payload},
        )
        if event is not None:
            self.events.append(str(event.id))

    def note(self, line: str) -> None:
        self.lines.append(line)
        try:
            get_run_logger().info(line)
        except Exception:  # noqa: BLE001 - outside a flow run
            pass

    def finish(
        self, outcome: str, reason: str, details: dict[str, Any] | None = None, route: AlertRoute | None = None
    ) -> dict[str, Any]:
        self.finished = True
        push_remediation_count(self.action, outcome)  # counted before the outcome is announced
        self.emit("outcome", outcome=outcome, reason=reason, **(details or {}))
        when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        md = [
            f"# Remediation: {self.action} {self.subject}",
            "",
            "| | |",
            "|---|---|",
            f"| alert | `{self.alertname}` |",
            f"| alert event | `{self.event_id or '-'}` |",
            f"| outcome | **{outcome}** |",
            f"| why | {reason} |",
            f"| when | {when} |",
        ]
        if route is not None:
            md.append(
                f"| route | action={route.action}, max_attempts={route.max_attempts}, "
                f"cooldown={route.cooldown_seconds:g} s, rate_limit={route.rate_limit}/min, "
                f"dry_run={route.dry_run} |"
            )
        if self.affected:
            md.append(f"| affected flow runs | {', '.join(f'`{r}`' for r in dict.fromkeys(self.affected))} |")
        md += ["", "## What happened", ""] + [f"- {line}" for line in self.lines or ["nothing"]]
        if details:
            md += ["", "## Details", "", "```json", json.dumps(details, indent=2, default=str), "```"]
        if self.flow_run_id:
            try:
                create_markdown_artifact(
                    key=f"remediation-{self.action}",
                    markdown="\n".join(md),
                    description=f"{self.action}: {outcome}: {reason}"[:500],
                )
            except Exception:  # noqa: BLE001
                pass
        return {
            "action": self.action,
            "outcome": outcome,
            "reason": reason,
            "alertname": self.alertname,
            "alert_event_id": self.event_id,
            "affected": list(dict.fromkeys(self.affected)),
            "actions": self.lines,
            "events": self.events,
            **(details or {}),
        }


def _guard_outcome(decision: Decision) -> str:
    return {"act": "succeeded", "dry_run": "dry_run", "rate_limited": "rate_limited"}.get(decision.outcome, "skipped")


def _id_from(resource_id: str) -> str | None:
    match = UUID_RE.search(resource_id or "")
    return match.group(0) if match else None


# -- retry ----------------------------------------------------------------------------
@flow(name="planflow-retry-run", log_prints=True, retries=0)
@audited
def retry_run(
    flow_run_id: str = "", event_id: str = "", event: str = "", resource_id: str = "", event_occurred: str = ""
) -> dict[str, Any]:
    """Run a failed or crashed pipeline flow run again, the same flow run, after a backoff;
    finished components are read back from their persisted results."""
    from prefect.states import AwaitingRetry

    run_id = flow_run_id or _id_from(resource_id) or ""
    route = load_route(FLOW_RUN_FAILED)
    audit = Audit("retry", FLOW_RUN_FAILED, event_id, run_id, event_occurred)
    if run_id:
        audit.affected.append(run_id)
    audit.emit("started", flow_run_id=run_id, trigger=event)
    if not run_id:
        return audit.finish("skipped", f"no flow run id in {resource_id!r}", route=route)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        state = run.state
        kind = state.type.value if state else "UNKNOWN"
        if state is None or kind not in ("FAILED", "CRASHED"):
            return audit.finish(
                "skipped",
                f"flow run {run.name} is {state.name if state else '-'} now, "
                "not failed or crashed (already retried, or a duplicate event)",
                route=route,
            )
        if "component" in run.tags or REMEDIATION_TAG in run.tags:
            return audit.finish(
                "skipped",
                f"flow run {run.name} is a component or remediation run: its parent pipeline run is the one retried",
                route=route,
            )
        if run.deployment_id is None:
            return audit.finish(
                "skipped",
                f"flow run {run.name} was not started from a deployment: no worker can run it again",
                route=route,
            )
        decision = Guard(route).admit(f"retry:{run_id}", extra={"flow_run": run.name})
        details = {"flow_run": run.name, "was": state.name, "attempt": decision.attempt, "decision": decision.outcome}
        if not decision.counted:
            audit.note(f"not retried: {decision.reason}")
            return audit.finish(_guard_outcome(decision), decision.reason, details, route)
        delay = route.backoff(decision.attempt)
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
        details.update(backoff_seconds=delay, scheduled_for=when.isoformat())
        if decision.outcome == "dry_run":
            audit.note(f"dry run: would set {run.name} ({state.name}) to AwaitingRetry in {delay:g} s")
            return audit.finish("dry_run", decision.reason, details, route)
        client.set_flow_run_state(
            run_id,
            AwaitingRetry(
                scheduled_time=when,
                message=(
                    f"planflow retry {decision.attempt}/{route.max_attempts} after {state.name}: "
                    f"{(state.message or '')[:200]}"
                ),
            ),
            force=True,
        )
        audit.note(
            f"set {run.name} from {state.name} to AwaitingRetry, due in {delay:g} s "
            f"(attempt {decision.attempt} of {route.max_attempts}); a worker of its pool runs "
            "the same flow run again, finished components come back Cached"
        )
        audit.emit("action", what="set-state", state="AwaitingRetry", flow_run_id=run_id, backoff_seconds=delay)
    return audit.finish("succeeded", decision.reason, details, route)


# -- what a failover or rescale run is about --------------------------------------------
FLOW_OF_ACTION = {"failover": "planflow-failover", "rescale": "planflow-rescale"}


@dataclass
class PoolAlert:
    """A pool alert as its remediation flow sees it, read once from the automation's
    parameters (or a re-check's)."""

    action: str
    alertname: str
    status: str  # firing | resolved
    pool: str
    labels: dict[str, Any]
    event_id: str
    route: AlertRoute
    guard: Guard
    key: str  # the guard's target, e.g. "failover:docker"
    audit: Audit

    def check_again(self, delay: float, recheck: int) -> str | None:
        """Run this remediation again in `delay` seconds as if the alert resolved (a
        re-check, number `recheck`); returns when, or None when it is not deployed."""
        return _schedule_again(
            f"{FLOW_OF_ACTION[self.action]}/remediation",
            delay,
            {
                "alertname": self.alertname,
                "work_pool": self.pool,
                "event_id": self.event_id,
                "event": "planflow.alert.resolved",
                "labels": self.labels,
                "status": "resolved",
                "recheck": recheck,
            },
        )


def _pool_alert(
    action: str,
    default_alertname: str,
    alertname: str,
    work_pool: str,
    event_id: str,
    event: str,
    resource_id: str,
    labels: dict[str, Any] | None,
    status: str,
    recheck: int,
    event_occurred: str,
    shared: bool = False,
    **started: Any,
) -> tuple[PoolAlert, dict[str, Any] | None]:
    """Parse the parameters, start the audit trail, and say whether to stop at once (no
    pool in the alert, or its route is not this action): (alert, result or None)."""
    labels = labels or {}
    alertname = alertname or labels.get("alertname", "") or default_alertname
    status = status or ("resolved" if event.endswith("resolved") else "firing")
    pool = _pool_from(resource_id, labels, work_pool)
    route = load_route(alertname)
    audit = Audit(action, alertname, event_id, pool, "" if recheck else event_occurred)
    audit.work_pools.append(pool)
    audit.emit("started", work_pool=pool, status=status, **started)
    alert = PoolAlert(
        action, alertname, status, pool, labels, event_id, route, Guard(route, shared=shared), f"{action}:{pool}", audit
    )
    if not pool:
        return alert, audit.finish("skipped", f"no work pool in the alert (resource {resource_id!r})", route=route)
    if route.action != action:
        return alert, audit.finish("skipped", f"route {alertname}: action is {route.action}", route=route)
    return alert, None


# -- failover -------------------------------------------------------------------------
# Alerts that say "no worker serves this pool" (as opposed to "its runs fail").
WORKER_ALERTS = ("PlanflowWorkPoolNotReady", "PlanflowWorkerHeartbeatStale")


def _pool_from(resource_id: str, labels: dict[str, Any] | None, work_pool: str) -> str:
    if work_pool:
        return work_pool
    if labels and labels.get("work_pool"):
        return str(labels["work_pool"])
    prefix = "prefect.work-pool."
    return resource_id[len(prefix) :] if resource_id.startswith(prefix) else ""


def _resource_pools_by_work_pool() -> dict[str, tuple[str, Any]]:
    from planflow.prefect.blocks.registry import load_pools

    return {pool.work_pool: (name, pool) for name, pool in load_pools().items()}


def stuck_runs(client, work_pool: str) -> list[Any]:
    """Flow runs on `work_pool` that wait for a worker: Scheduled (incl. Late) or Pending."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType

    return client.read_flow_runs(
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[work_pool])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING]))
        ),
        limit=200,
    )


def _replan(flow_name: str, backup_name: str, backup: Any) -> dict[str, Any]:
    """The pipeline's plan on the backup pool alone (its capacities), for the record."""
    try:
        from planflow.core import discovery as registry
        from planflow.planner import PlannerOptions
        from planflow.prefect.blocks.registry import load_settings
        from planflow.runtime.planning import plan_pipeline

        pipeline = registry.get(flow_name)
        settings = load_settings()
        pp = plan_pipeline(
            pipeline,
            {backup_name: backup.capacity()},
            {backup_name: backup.cost_per_hour},
            PlannerOptions(solver=settings.solver, time_limit_s=min(5.0, settings.time_limit_s)),
            None,
            {backup_name},
        )
        return {
            "pipeline": pipeline.name,
            "makespan_s": round(pp.plan.makespan, 3),
            "status": pp.plan.status,
            "pools": sorted({a.pool for a in pp.assignments.values()}),
        }
    except Exception as exc:  # noqa: BLE001 - a run of a flow planflow does not know
        return {"pipeline": flow_name, "error": f"{type(exc).__name__}: {exc}"[:300]}


@flow(name="planflow-failover", log_prints=True, retries=0)
@audited
def failover(
    alertname: str = "",
    work_pool: str = "",
    event_id: str = "",
    event: str = "",
    resource_id: str = "",
    labels: dict[str, Any] | None = None,
    status: str = "",
    recheck: int = 0,
    event_occurred: str = "",
) -> dict[str, Any]:
    """Firing: pause the pool, cancel its stuck runs, resubmit them on the backup pool.
    Resolved: resume the pool if failover paused it and a worker serves it again (else
    check again later, up to RECHECKS times)."""
    from prefect.client.schemas.actions import WorkPoolUpdate
    from prefect.states import Cancelled

    alert, skipped = _pool_alert(
        "failover",
        "PlanflowWorkPoolNotReady",
        alertname,
        work_pool,
        event_id,
        event,
        resource_id,
        labels,
        status,
        recheck,
        event_occurred,
        shared=True,
    )  # one failover per pool, whichever pool alert fired
    if skipped is not None:
        return skipped
    alertname, status, pool, labels = alert.alertname, alert.status, alert.pool, alert.labels
    route, guard, key, audit = alert.route, alert.guard, alert.key, alert.audit

    with get_client(sync_client=True) as client:
        if status == "resolved":
            ledger = guard.ledger(key)
            if route.dry_run:
                audit.note(f"dry run: would resume work pool {pool} (paused by failover: {bool(ledger.get('paused'))})")
                guard.reset(key)
                return audit.finish("dry_run", "alert resolved", {"ledger": ledger}, route)
            if not ledger.get("paused"):
                guard.reset(key)
                return audit.finish(
                    "skipped", f"alert resolved; failover had not paused {pool}", {"ledger": ledger}, route
                )
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
                # Pausing a pool that has no worker resolves "not ready" by itself: resume
                # only once a worker is back, checking again later (bounded).
                planned = None if recheck >= RECHECKS else alert.check_again(recheck_delay(recheck), recheck + 1)
                audit.note(
                    f"alert resolved but {pool} has no live worker: stays paused; "
                    + (f"checking again at {planned}" if planned else "no more re-checks")
                )
                return audit.finish(
                    "skipped", f"{pool} has no live worker yet", {"recheck": recheck, "next_check": planned}, route
                )
            client.update_work_pool(pool, WorkPoolUpdate(is_paused=False))
            audit.note(f"resumed work pool {pool} (paused by failover at {ledger.get('paused_at')})")
            audit.emit("action", what="resume-work-pool", work_pool=pool)
            guard.reset(key)
            return audit.finish(
                "succeeded", f"alert {alertname} resolved: pool {pool} resumed", {"resumed": pool}, route
            )

        previous = guard.ledger(key)
        if previous.get("paused"):
            try:
                if not client.read_work_pool(pool).is_paused:  # resumed by hand: a new episode
                    guard.reset(key)
            except Exception:  # noqa: BLE001
                pass
        by_work_pool = _resource_pools_by_work_pool()
        source_name, source = by_work_pool.get(pool, (None, None))
        backup_name = source.backup_pool if source else None
        from planflow.prefect.blocks.registry import load_pools

        backup = load_pools().get(backup_name) if backup_name else None
        stuck = stuck_runs(client, pool)
        live = live_workers(client, pool)
        pool_status = str(getattr(client.read_work_pool(pool).status, "value", "")).upper()
        if alertname in WORKER_ALERTS and live and pool_status == "READY":
            # The alert was about a worker that is back by now (or a pool seen between its
            # creation and its worker's first heartbeat): nothing is unhealthy any more.
            audit.note(f"{pool} is READY with live worker(s) {', '.join(live)}: the alert is stale")
            return audit.finish(
                "skipped", f"{pool} recovered before the failover ran", {"work_pool": pool, "live_workers": live}, route
            )
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
            return audit.finish(_guard_outcome(decision), decision.reason, {"decision": decision.outcome}, route)
        dry = decision.outcome == "dry_run"
        details: dict[str, Any] = {
            "work_pool": pool,
            "resource_pool": source_name,
            "backup_pool": backup_name,
            "backup_work_pool": backup.work_pool if backup else None,
            "cancelled": [],
            "resubmitted": [],
            "kept": [],
            "replans": {},
        }
        if dry:
            audit.note(f"dry run: would pause work pool {pool}")
        else:
            client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
            guard.update(key, paused=True, paused_at=dt.datetime.now(dt.UTC).isoformat())
            audit.note(f"paused work pool {pool}: no new run starts there until the alert resolves")
            audit.emit("action", what="pause-work-pool", work_pool=pool)

        for run in stuck:
            audit.affected.append(str(run.id))
            target, flow_obj, why = None, None, ""
            if "component" in run.tags:
                why = "a component run: cancelled; its pipeline run fails and is retried, re-planned on ready pools"
            elif backup is None:
                why = "no backup pool: kept queued, it starts when the pool is resumed"
            elif run.deployment_id is None:
                why = "not from a deployment: kept queued"
            else:
                flow_obj = client.read_flow(run.flow_id)
                target = _equivalent_deployment(client, run.flow_id, backup.work_pool)
                if target is None:
                    why = f"flow {flow_obj.name} has no deployment on {backup.work_pool}: kept queued"
            if target is None and "component" not in run.tags:
                details["kept"].append(f"{run.name}: {why}")
                audit.note(f"{run.name} ({run.state.name}): {why}")
                continue
            if dry:
                audit.note(
                    f"dry run: would cancel {run.name} ({run.state.name})"
                    + (f" and resubmit it on {backup.work_pool}" if target else f" ({why})")
                )
                details["cancelled"].append(run.name)
                continue
            client.set_flow_run_state(
                run.id,
                Cancelled(
                    message=(
                        f"planflow failover: work pool {pool} is unhealthy ({alertname}); "
                        + (f"resubmitted on {backup.work_pool}" if target else why)
                    )
                ),
                force=True,
            )
            audit.note(f"cancelled {run.name} ({run.state.name}) on {pool}" + ("" if target else f": {why}"))
            audit.emit("action", what="cancel-flow-run", flow_run_id=str(run.id))
            details["cancelled"].append(run.name)
            if target is None:
                continue
            if flow_obj.name not in details["replans"]:
                details["replans"][flow_obj.name] = _replan(flow_obj.name, backup_name, backup)
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
                    "deployment": f"{flow_obj.name}/{target.name}",
                    "work_pool": backup.work_pool,
                }
            )
            audit.note(
                f"resubmitted {run.name} as {new.name} ({flow_obj.name}/{target.name}) on "
                f"{backup.work_pool}, planned with pool '{backup_name}' "
                f"({details['replans'][flow_obj.name].get('makespan_s', '?')} s makespan)"
            )
            audit.emit(
                "action",
                what="resubmit",
                from_flow_run_id=str(run.id),
                flow_run_id=str(new.id),
                work_pool=backup.work_pool,
            )
        if backup is None:
            audit.note(
                f"work pool {pool} has no backup pool (ResourcePool {source_name!r}): "
                "paused only, its waiting runs kept queued"
            )
    outcome = "dry_run" if dry else "succeeded"
    return audit.finish(outcome, f"{alertname} on {pool}: {decision.reason}", details, route)


# A pool paused by failover whose alert resolved with no worker back is checked again
# every 15 s for two minutes, then 30, 60, ... at most 10 min apart, for about a day
# (then a person resumes it).
RECHECKS = 150
RECHECK_SECONDS = 15.0
RECHECK_MAX_SECONDS = 600.0


def recheck_delay(recheck: int) -> float:
    """Seconds until re-check number `recheck` + 1 of a paused pool."""
    if recheck < 8:
        return RECHECK_SECONDS
    return min(RECHECK_MAX_SECONDS, RECHECK_SECONDS * 2 ** min(recheck - 7, 10))


def _equivalent_deployment(client, flow_id, work_pool: str):
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        FlowFilter,
        FlowFilterId,
        WorkPoolFilter,
        WorkPoolFilterName,
    )

    found = client.read_deployments(
        flow_filter=FlowFilter(id=FlowFilterId(any_=[flow_id])),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[work_pool])),
        deployment_filter=DeploymentFilter(),
        limit=10,
    )
    return sorted(found, key=lambda d: d.name)[0] if found else None


def _backup_job_variables(client, backup) -> dict[str, Any]:
    from planflow.prefect.jobvars import job_variables

    try:
        kind = client.read_work_pool(backup.work_pool).type
        return job_variables(kind, cpu=backup.cpu, gpu=backup.gpu, mem_gib=backup.mem_gib, gpu_pool=backup.gpu > 0)
    except Exception:  # noqa: BLE001
        return {}


# -- rescale --------------------------------------------------------------------------
def _workers_dir() -> Path:
    from planflow.settings import StatePaths

    folder = StatePaths.discover().home / "remediation"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def live_workers(client, work_pool: str) -> list[str]:
    now = dt.datetime.now(dt.UTC)
    alive = []
    for worker in client.read_workers_for_work_pool(work_pool):
        beat = worker.last_heartbeat_time
        interval = worker.heartbeat_interval_seconds or 30
        if (
            beat
            and (now - beat).total_seconds() <= 3 * interval
            and str(getattr(worker.status, "value", worker.status)).upper() != "OFFLINE"
        ):
            alive.append(worker.name)
    return alive


def backlog_curve(backlog_seconds: list[float], counts: range | list[int]) -> dict[int, float]:
    """The planner's makespan of the backlog (one task per waiting run, its estimated
    duration) with each number of worker slots in `counts`: what more workers buy."""
    from planflow.planner import Mode, PlannerOptions, Pool, Problem, Task, solve

    if not backlog_seconds:
        return {n: 0.0 for n in counts}
    tasks = tuple(
        Task(f"run{i}", (Mode("workers", max(0.1, s), {"slot": 1.0}),)) for i, s in enumerate(backlog_seconds)
    )
    return {
        n: float(
            solve(
                Problem(tasks, (Pool("workers", {"slot": float(max(1, n))}),)), PlannerOptions(time_limit_s=2.0)
            ).makespan
        )
        for n in counts
    }


def workers_to_reach(curve: dict[int, float], tolerance: float = 0.05) -> int:
    """The fewest workers whose planned makespan is within `tolerance` of the best the
    curve offers (more would cost a worker and buy almost nothing)."""
    best = min(curve.values())
    return min(n for n, makespan in curve.items() if makespan <= best * (1 + tolerance) + 1e-9)


def _estimate_seconds(client, run) -> float:
    """A waiting run's expected duration: its pipeline's critical path, else 30 s."""
    try:
        from planflow.core import discovery as registry

        flow_obj = client.read_flow(run.flow_id)
        return float(registry.get(flow_obj.name).totals()["critical_path_seconds"]) or 30.0
    except Exception:  # noqa: BLE001
        return 30.0


def start_worker(work_pool: str, pool_type: str, name: str) -> int:
    """Start `prefect worker start` for the pool as a detached process; returns its pid."""
    from planflow.ops.workers import start_worker as start
    from planflow.settings import StatePaths, client_env

    env = dict(os.environ)
    try:
        env.update(client_env(StatePaths.discover()))
    except Exception:  # noqa: BLE001
        pass
    if os.environ.get("PREFECT_API_URL"):
        env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]
    return start(
        work_pool,
        _workers_dir() / f"{name}.log",
        pool_type=pool_type,
        name=name,
        env=env,
        query_seconds=float(env.get("PREFECT_WORKER_QUERY_SECONDS", 2)),
    ).pid


def stop_worker(pid: int, name: str) -> bool:
    """Stop a worker this module started (checked by its command line); True if stopped."""
    from planflow.ops.workers import is_our_process, stop_group

    if not is_our_process(pid, name):
        return False  # gone, or the pid was recycled by another program
    return stop_group(pid, 15)


@flow(name="planflow-rescale", log_prints=True, retries=0)
@audited
def rescale(
    alertname: str = "",
    work_pool: str = "",
    work_queue: str = "",
    event_id: str = "",
    event: str = "",
    resource_id: str = "",
    labels: dict[str, Any] | None = None,
    status: str = "",
    recheck: int = 0,
    event_occurred: str = "",
) -> dict[str, Any]:
    """Firing: if the planner says one more worker shortens the backlog, raise the pool's
    (and queue's) concurrency limit and start a worker, within the route's bounds.
    Resolved: stop the workers it started and restore the limits."""
    from prefect.client.schemas.actions import WorkPoolUpdate

    queue = work_queue or (labels or {}).get("work_queue", "")
    alert, skipped = _pool_alert(
        "rescale",
        "PlanflowLateRunBacklog",
        alertname,
        work_pool,
        event_id,
        event,
        "" if resource_id.startswith("prefect.work-queue.") else resource_id,
        labels,
        status,
        recheck,
        event_occurred,
        work_queue=queue,
    )
    if skipped is not None:
        return skipped
    alertname, pool = alert.alertname, alert.pool
    route, guard, key, audit = alert.route, alert.guard, alert.key, alert.audit

    with get_client(sync_client=True) as client:
        if alert.status == "resolved":
            return _scale_down(client, alert, recheck)

        pool_obj = client.read_work_pool(pool)
        live = live_workers(client, pool)
        if pool_obj.type == "kubernetes":  # the workers are the Deployment's replicas
            from planflow.remediation.kube import worker_replicas

            replicas = worker_replicas(route.kubernetes_namespace, route.kubernetes_worker_deployment)
            live = live + [f"replica-{i}" for i in range(len(live), replicas)]
        ledger = guard.ledger(key)
        started = [w for w in ledger.get("workers", [])]
        backlog = stuck_runs(client, pool)
        audit.affected.extend(str(r.id) for r in backlog)
        estimates = [_estimate_seconds(client, r) for r in backlog]
        n = max(len(live), 1)
        top = max(n + 1, route.max_workers)
        curve = backlog_curve(estimates, range(n, top + 1))
        target = max(workers_to_reach(curve), route.min_workers)
        now_ms, next_ms = curve[n], curve[n + 1]
        gain = now_ms - next_ms
        details: dict[str, Any] = {
            "work_pool": pool,
            "work_queue": queue,
            "live_workers": live,
            "backlog_runs": len(backlog),
            "backlog_estimates_s": estimates,
            "makespan_with_n_s": now_ms,
            "makespan_with_n_plus_1_s": next_ms,
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
            return audit.finish(_guard_outcome(decision), decision.reason, details, route)
        want = min(target, route.max_workers) - len(live)
        limit = pool_obj.concurrency_limit
        new_limit = None
        if limit is not None:
            new_limit = min(route.max_concurrency or limit + want, limit + want)
        if decision.outcome == "dry_run":
            audit.note(f"dry run: would set {pool} concurrency {limit} -> {new_limit} and start {want} worker(s)")
            details.update(would_start=want, would_limit=new_limit)
            return audit.finish("dry_run", decision.reason, details, route)
        # What to undo is recorded before it is done, and `scaling` tells a scale-down
        # that runs meanwhile (the alert may resolve within seconds once the limit is
        # raised) to check again later instead of finding nothing to undo.
        updates: dict[str, Any] = {"queue": queue or None, "scaling": True}
        if "pool_limit_before" not in ledger:
            updates["pool_limit_before"] = limit
        guard.update(key, **updates)
        if new_limit is not None and new_limit != limit:
            client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=new_limit))
            audit.note(f"work pool {pool} concurrency limit {limit} -> {new_limit}")
            audit.emit("action", what="raise-pool-concurrency", before=limit, after=new_limit)
        if queue:
            try:
                q = client.read_work_queue_by_name(queue, work_pool_name=pool)
                if q.concurrency_limit is not None:
                    if "queue_limit_before" not in ledger:
                        guard.update(key, queue_limit_before=q.concurrency_limit)
                    q_new = min(route.max_concurrency or q.concurrency_limit + want, q.concurrency_limit + want)
                    client.update_work_queue(q.id, concurrency_limit=q_new)
                    audit.note(f"work queue {queue} concurrency limit {q.concurrency_limit} -> {q_new}")
            except Exception as exc:  # noqa: BLE001
                audit.note(f"work queue {queue}: not changed ({exc})")
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
    return audit.finish("succeeded", f"{alertname} on {pool}: {decision.reason}", details, route)


def scale_out(pool: str, pool_type: str, count: int, route: AlertRoute) -> list[dict[str, Any]]:
    """Add `count` workers to `pool`. Kubernetes: the worker Deployment's replicas (one
    record, with the replicas before); otherwise local worker processes (for Docker pools
    too: the worker is a process that starts containers). Returns what scale-down needs."""
    if pool_type == "kubernetes":
        from planflow.remediation.kube import scale_workers, worker_replicas

        namespace, name = route.kubernetes_namespace, route.kubernetes_worker_deployment
        before = worker_replicas(namespace, name)
        after = scale_workers(namespace, name, min(before + count, route.max_workers))
        return [
            {
                "kind": "kubernetes",
                "name": f"{namespace}/{name}",
                "namespace": namespace,
                "deployment": name,
                "replicas_before": before,
                "replicas": after,
            }
        ]
    workers = []
    for _ in range(count):
        name = f"planflow-rescale-{pool}-{uuid.uuid4().hex[:6]}"
        workers.append({"kind": "process", "pid": start_worker(pool, pool_type, name), "name": name})
    return workers


SCALE_DOWN_RECHECK_SECONDS = 10.0
SCALE_DOWN_RECHECKS = 360  # an hour of 10 s checks for a worker to finish its flow runs


def _busy_for_a_while(pid: int, grace: float = 15.0) -> bool:
    """Still running a flow run after `grace` seconds (a run that just ended leaves its
    supervisor process behind for a few seconds while it reports and cleans up)."""
    from planflow.ops.workers import busy

    deadline = time.monotonic() + grace
    while busy(pid):
        if time.monotonic() > deadline:
            return True
        time.sleep(0.5)
    return False


def _scale_down(client, alert: PoolAlert, recheck: int) -> dict[str, Any]:
    """Resolved: restore the limits at once (no new run beyond the old capacity starts),
    stop each started worker that is idle, and check again later for the busy ones (a
    worker's flow runs are its child processes: stopping it would crash them)."""
    from prefect.client.schemas.actions import WorkPoolUpdate

    from planflow.ops.workers import is_our_process

    audit, guard, key, pool, route = alert.audit, alert.guard, alert.key, alert.pool, alert.route
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
        client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=ledger["pool_limit_before"]))
        audit.note(f"work pool {pool} concurrency limit back to {ledger['pool_limit_before']}")
        if ledger.get("queue") and "queue_limit_before" in ledger:
            q = client.read_work_queue_by_name(ledger["queue"], work_pool_name=pool)
            client.update_work_queue(q.id, concurrency_limit=ledger["queue_limit_before"])
            audit.note(f"work queue {ledger['queue']} concurrency limit back to {ledger['queue_limit_before']}")
        audit.emit("action", what="restore-limits", work_pool=pool, limit=ledger["pool_limit_before"])
    stopped, waiting = [], []
    for worker in ledger.get("workers", []):
        if worker.get("kind") == "kubernetes":
            from planflow.remediation.kube import scale_workers

            replicas = scale_workers(worker["namespace"], worker["deployment"], int(worker["replicas_before"]))
            stopped.append(worker["name"])
            audit.note(
                f"worker Deployment {worker['name']} scaled back to {replicas} replica(s) "
                "(running flow-run Jobs are not affected)"
            )
            continue
        pid, name = int(worker["pid"]), worker["name"]
        if not is_our_process(pid, name):
            continue  # already gone
        if _busy_for_a_while(pid):
            waiting.append(worker)
            continue
        if stop_worker(pid, name):
            stopped.append(name)
            audit.note(f"stopped idle worker {name} (pid {pid})")
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


def _schedule_again(deployment_name: str, delay: float, parameters: dict[str, Any]) -> str | None:
    """A later run of a remediation deployment (a re-check); None when it is not deployed."""
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Scheduled

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(deployment_name)
        except ObjectNotFound:
            return None
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
        client.create_flow_run_from_deployment(
            deployment.id,
            parameters=parameters,
            state=Scheduled(scheduled_time=when),
            tags=[REMEDIATION_TAG, "recheck"],
        )
    return when.isoformat(timespec="seconds")


REMEDIATION_FLOWS = {"retry": retry_run, "failover": failover, "rescale": rescale}
