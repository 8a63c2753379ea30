"""The one parameter of every remediation flow: the event it answers, typed.

The automations fill it from the triggering Prefect event (`EVENT_TEMPLATE` for
Prefect's own flow-run events, `ALERT_TEMPLATE` for `planflow.alert.*` events from the
bridge): Prefect renders each templated field of the `alert` dict parameter when the
automation's RunDeployment action fires. A re-check fills it from the alert it follows
up, and a person can fill it in the deployment's Run form in the UI, where it shows as
one typed object.

    failover(AlertEvent(alertname="PlanflowWorkPoolNotReady", work_pool="docker"))
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

WORK_POOL_RESOURCE = "prefect.work-pool."
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class AlertEvent(BaseModel):
    """What a remediation flow answers: an alert (or Prefect flow-run event) about a work
    pool or a flow run. Every field may be empty; the flow says why it did nothing when
    what it needs is missing."""

    model_config = ConfigDict(extra="forbid")

    alertname: str = Field(default="", description="The alert's name; empty: the labels' `alertname`.")
    work_pool: str = Field(default="", description="The work pool; empty: the labels' or the resource's.")
    event_id: UUID | None = Field(default=None, description="The id of the triggering Prefect event.")
    event: str = Field(default="", description="The triggering event's name, e.g. planflow.alert.firing.")
    resource_id: str = Field(
        default="", description="The event's resource, e.g. prefect.work-pool.docker or prefect.flow-run.<id>."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="The alert's labels.")
    status: Literal["firing", "resolved"] | None = Field(
        default=None, description="firing or resolved; empty: from the event's name."
    )
    recheck: int = Field(default=0, ge=0, description="The number of this re-check (0: the alert itself).")
    event_occurred: datetime | None = Field(default=None, description="When the triggering event occurred.")

    def name_or(self, default: str) -> str:
        """The alert's name: the field, else the labels', else `default`."""
        return self.alertname or self.labels.get("alertname", "") or default

    @property
    def current_status(self) -> Literal["firing", "resolved"]:
        if self.status is not None:
            return self.status
        return "resolved" if self.event.endswith("resolved") else "firing"

    @property
    def pool(self) -> str:
        """The work pool the alert is about ("" when it names none)."""
        if self.work_pool:
            return self.work_pool
        if self.labels.get("work_pool"):
            return self.labels["work_pool"]
        return (
            self.resource_id.removeprefix(WORK_POOL_RESOURCE) if self.resource_id.startswith(WORK_POOL_RESOURCE) else ""
        )

    @property
    def queue(self) -> str:
        return self.labels.get("work_queue", "")

    @property
    def flow_run_id(self) -> str:
        """The flow run the event is about (from its resource, else the labels), or ""."""
        match = UUID_RE.search(self.resource_id) if self.resource_id.startswith("prefect.flow-run.") else None
        return match.group(0) if match else self.labels.get("flow_run_id", "")

    @property
    def occurred_at(self) -> datetime | None:
        """When the triggering event occurred, as an aware time; None when it is not known
        (a re-check, or a run started by hand)."""
        when = self.event_occurred
        return when if when is None or when.tzinfo else when.replace(tzinfo=UTC)

    def seconds_since_trigger(self, now: datetime | None = None) -> float | None:
        """Seconds from the triggering event to now; None when it is not known (a re-check)."""
        occurred = self.occurred_at
        return None if occurred is None else max(0.0, ((now or datetime.now(UTC)) - occurred).total_seconds())

    def recheck_as_resolved(self, alertname: str, pool: str, recheck: int) -> AlertEvent:
        """The parameter of re-check number `recheck`: this alert, resolved."""
        return self.model_copy(
            update={
                "alertname": alertname,
                "work_pool": pool,
                "event": "planflow.alert.resolved",
                "status": "resolved",
                "recheck": recheck,
                "event_occurred": None,
            }
        )


def _text(template: str) -> dict[str, str]:
    """A field rendered as text (a bare "{{ x }}" would be rendered through tojson,
    which fails for the event's UUID id)."""
    return {"__prefect_kind": "jinja", "template": template}


EVENT_TEMPLATE: dict[str, Any] = {
    "event_id": _text("{{ event.id }}"),
    "event_occurred": _text("{{ event.occurred }}"),
    "event": _text("{{ event.event }}"),
    "resource_id": _text("{{ event.resource.id }}"),
}
ALERT_TEMPLATE: dict[str, Any] = {
    **EVENT_TEMPLATE,
    "labels": {
        "__prefect_kind": "json",
        "value": {"__prefect_kind": "jinja", "template": "{{ event.payload.labels | tojson }}"},
    },
}


def run_parameters(template: dict[str, Any]) -> dict[str, Any]:
    """The RunDeployment parameters of an automation: the one `alert` parameter, templated."""
    return {"alert": dict(template)}
