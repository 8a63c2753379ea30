"""The audit trail of a remediation: Prefect events, a Pushgateway counter and latency,
and a markdown artifact saying what happened and why.

Every remediation flow opens an `Audit` and ends it with `finish`:

- events `planflow.remediation.started|action|outcome`, related to the alert's event,
  the remediation flow run, the affected flow runs and work pools, and the alert rule;
- `planflow_remediations_total{action,outcome}` and
  `planflow_remediation_alert_latency_seconds{action}` on the Pushgateway;
- a markdown artifact `remediation-<action>` on the remediation flow run.

`@audited` makes a remediation whose code raises still end its trail (outcome "failed").
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prometheus_client import CollectorRegistry, push_to_gateway, pushadd_to_gateway
from prometheus_client.parser import text_string_to_metric_families

from planflow.monitoring.metrics import RemediationMetrics, pushgateway_url_from_env
from planflow.prefect.blocks.alert_route import AlertRoute
from planflow.remediation.alert import AlertEvent
from planflow.remediation.guard import guard_lock
from planflow.remediation.names import REMEDIATION_POOL

PUSH_JOB = REMEDIATION_POOL
log = logging.getLogger("planflow.remediation")
F = TypeVar("F", bound=Callable[..., Any])


# -- metrics --------------------------------------------------------------------------
def _add_one(url: str, action: str, outcome: str) -> None:
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


def push_remediation_count(action: str, outcome: str, url: str | None = None) -> bool:
    """Add one to planflow_remediations_total{action,outcome} on the Pushgateway.

    Remediations run in short-lived processes, so the counter lives in one Pushgateway
    group (job `planflow-remediation`): read its current values, add one, push the group
    back, under the guard's server-side lock so that two remediations do not lose an
    increment. Never raises; False when nothing was pushed."""
    url = url or pushgateway_url_from_env()
    if not url:
        return False
    try:
        with guard_lock(timeout=30):
            _add_one(url, action, outcome)
        return True
    except Exception as exc:  # noqa: BLE001 - monitoring never fails a remediation
        log.warning("could not push remediation count: %r", exc)
        return False


def push_remediation_latency(action: str, seconds: float, url: str | None = None) -> bool:
    """Set planflow_remediation_alert_latency_seconds{action} on the Pushgateway (its own
    group per action, job `planflow-remediation-latency`). Never raises."""
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
        log.warning("could not push remediation latency: %r", exc)
        return False


# -- the trail of one remediation -----------------------------------------------------
_current_audit: contextvars.ContextVar[Audit | None] = contextvars.ContextVar("planflow_audit", default=None)


def audited(fn: F) -> F:
    """A remediation whose code raises still ends its audit trail: outcome "failed"."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
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

    return wrapper  # type: ignore[return-value]


def _current_flow_run_id() -> str | None:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


class Audit:
    """The events, metrics and artifact of one remediation."""

    def __init__(self, action: str, alertname: str, subject: str = "", alert: AlertEvent | None = None) -> None:
        _current_audit.set(self)
        self.finished = False
        self.action = action
        self.alertname = alertname
        self.subject = subject
        self.alert = alert or AlertEvent()
        self.event_id = str(self.alert.event_id or "")
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
        if phase == "started":
            latency = self.alert.seconds_since_trigger()
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

    def _markdown(self, outcome: str, reason: str, details: dict[str, Any], route: AlertRoute | None) -> str:
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
        return "\n".join(md)

    def finish(
        self, outcome: str, reason: str, details: dict[str, Any] | None = None, route: AlertRoute | None = None
    ) -> dict[str, Any]:
        """Count, announce and write down the outcome; returns the flow's result."""
        self.finished = True
        details = details or {}
        push_remediation_count(self.action, outcome)  # counted before the outcome is announced
        self.emit("outcome", outcome=outcome, reason=reason, **details)
        if self.flow_run_id:
            try:
                create_markdown_artifact(
                    key=f"remediation-{self.action}",
                    markdown=self._markdown(outcome, reason, details, route),
                    description=f"{self.action}: {outcome}: {reason}"[:500],
                )
            except Exception:  # noqa: BLE001 - the events and the result still tell
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
            **details,
        }
