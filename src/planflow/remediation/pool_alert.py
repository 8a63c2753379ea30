"""The prologue of the failover and rescale flows: one pool alert, read once.

`open_pool_alert` turns the flow's `AlertEvent` into the pool, the route, the guard and
the ledger key, starts the audit trail, and says whether to stop at once (no pool in the
alert, the remediation machinery's own pool, a pool that does not exist, or a route that
is not this action). `PoolAlert.check_again` schedules a later run of the same
remediation deployment as a re-check of the resolved alert (one waits at a time).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Scheduled

from planflow.prefect.blocks.alert_route import AlertRoute, load_route
from planflow.remediation.alert import AlertEvent
from planflow.remediation.audit import Audit
from planflow.remediation.guard import Guard
from planflow.remediation.names import REMEDIATION_FLOW_NAMES, REMEDIATION_POOL, REMEDIATION_TAG, deployment_of

RECHECK_TAG = "recheck"


@dataclass
class PoolAlert:
    """A pool alert as its remediation flow sees it."""

    action: str  # failover | rescale
    flow_name: str  # the remediation flow, whose deployment a re-check runs
    alertname: str
    status: str  # firing | resolved
    pool: str
    event: AlertEvent
    route: AlertRoute
    guard: Guard
    key: str  # the guard's target, e.g. "failover:docker"
    audit: Audit

    @property
    def recheck(self) -> int:
        return self.event.recheck

    def check_again(self, delay: float, recheck: int) -> str | None:
        """Run this remediation again in `delay` seconds as if the alert resolved (a
        re-check, number `recheck`); returns when, or None when it is not deployed."""
        follow_up = self.event.recheck_as_resolved(self.alertname, self.pool, recheck)
        return schedule_again(deployment_of(self.flow_name), delay, {"alert": follow_up.model_dump(mode="json")})


def open_pool_alert(
    action: str, flow_name: str, default_alertname: str, event: AlertEvent, shared: bool = False
) -> tuple[PoolAlert, dict[str, Any] | None]:
    """Read the alert, start the audit trail, and say whether to stop at once:
    (alert, the flow's result or None). `shared`: one guard ledger per pool, whichever
    alert fired (see Guard)."""
    alertname = event.name_or(default_alertname)
    pool = event.pool
    route = load_route(alertname)
    audit = Audit(action, alertname, pool, event)
    audit.work_pools.append(pool)
    extra = {"work_queue": event.queue} if action == "rescale" else {}
    audit.emit("started", work_pool=pool, status=event.current_status, **extra)
    alert = PoolAlert(
        action=action,
        flow_name=flow_name,
        alertname=alertname,
        status=event.current_status,
        pool=pool,
        event=event,
        route=route,
        guard=Guard(route, shared=shared),
        key=f"{action}:{pool}",
        audit=audit,
    )
    if not pool:
        return alert, audit.finish(
            "skipped", f"no work pool in the alert (resource {event.resource_id!r})", route=route
        )
    refused = machinery_target(event)
    if refused:
        audit.note(refused)
        return alert, audit.finish("skipped", refused, route=route)
    if not pool_exists(pool):
        if alert.guard.ledger(alert.key):
            alert.guard.reset(alert.key)  # what it did to a pool that is gone is moot
        return alert, audit.finish(
            "skipped", f"work pool {pool} does not exist (deleted, or an alert about a mistyped pool)", route=route
        )
    if route.action != action:
        return alert, audit.finish("skipped", f"route {alertname}: action is {route.action}", route=route)
    return alert, None


def machinery_target(event: AlertEvent) -> str | None:
    """Why the alert is about the remediation machinery itself (its pool, one of its
    flows or deployments), which no remediation acts on; None when it is not. The
    automations already do not match such alerts: this is the second line."""
    pool, labels = event.pool, event.labels
    if pool == REMEDIATION_POOL:
        return (
            f"work pool {pool} runs the remediations themselves: no remediation acts on it "
            "(pausing or rescaling it would stop the healing loop); its alerts are for a person"
        )
    if labels.get("flow") in REMEDIATION_FLOW_NAMES:
        return f"the alert is about the remediation flow {labels['flow']}: no remediation acts on its own runs"
    if REMEDIATION_TAG in labels.get("tags", "").split(","):
        return f"the alert is about runs tagged {REMEDIATION_TAG}: no remediation acts on its own runs"
    return None


def pool_exists(pool: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            return False
    return True


def pending_recheck(client: SyncPrefectClient, deployment_id: Any, pool: str) -> FlowRun | None:
    """A re-check of `pool` by this deployment that is scheduled and has not run yet."""
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[RECHECK_TAG]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
        ),
        limit=200,
    )
    return next((r for r in runs if (r.parameters.get("alert") or {}).get("work_pool") == pool), None)


def schedule_again(deployment_name: str, delay: float, parameters: dict[str, Any]) -> str | None:
    """A later run of a remediation deployment (a re-check); None when it is not deployed.
    At most one re-check per pool and deployment waits at a time (a re-check acts on the
    pool as it is then, so a second one adds nothing but a run in the list): when one is
    already scheduled, its time is returned and no other is made."""
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(deployment_name)
        except ObjectNotFound:
            return None
        pool = (parameters.get("alert") or {}).get("work_pool", "")
        waiting = pending_recheck(client, deployment.id, pool) if pool else None
        if waiting is not None and waiting.state and waiting.state.state_details.scheduled_time:
            return waiting.state.state_details.scheduled_time.isoformat(timespec="seconds")
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
        client.create_flow_run_from_deployment(
            deployment.id,
            parameters=parameters,
            state=Scheduled(scheduled_time=when),
            tags=[REMEDIATION_TAG, RECHECK_TAG],
        )
    return when.isoformat(timespec="seconds")
