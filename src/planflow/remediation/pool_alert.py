"""The prologue of the failover and rescale flows: one pool alert, read once.

`open_pool_alert` turns the flow's `AlertEvent` into the pool, the route, the guard and
the ledger key, starts the audit trail, and says whether to stop at once (no pool in the
alert, or its route is not this action). `PoolAlert.check_again` schedules a later run
of the same remediation deployment as a re-check of the resolved alert.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.states import Scheduled

from planflow.prefect.blocks.alert_route import AlertRoute, load_route
from planflow.remediation.alert import AlertEvent
from planflow.remediation.audit import Audit
from planflow.remediation.guard import Guard
from planflow.remediation.names import REMEDIATION_TAG, deployment_of


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
    if route.action != action:
        return alert, audit.finish("skipped", f"route {alertname}: action is {route.action}", route=route)
    return alert, None


def schedule_again(deployment_name: str, delay: float, parameters: dict[str, Any]) -> str | None:
    """A later run of a remediation deployment (a re-check); None when it is not deployed."""
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
