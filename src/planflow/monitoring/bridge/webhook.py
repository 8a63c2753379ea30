"""The Alertmanager webhook body (version 4), the Prefect event made of each alert, and
the messages that name what is wrong with a malformed body."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

EVENT_NAMESPACE = uuid.UUID("5b0d5d3e-8f1c-4a53-9a77-6c1f4d1f0a11")
# Alert labels that name a Prefect or planflow object, most specific first:
# (label, resource id prefix, role in `related`).
RESOURCE_LABELS = (
    ("flow_run_id", "prefect.flow-run.", "flow-run"),
    ("pipeline", "planflow.pipeline.", "pipeline"),
    ("deployment_id", "prefect.deployment.", "deployment"),
    ("work_pool", "prefect.work-pool.", "work-pool"),
    ("work_queue", "prefect.work-queue.", "work-queue"),
    ("flow", "prefect.flow.", "flow"),
)

# Bounds checked before any Alert object is made (Alertmanager's own alerts are far
# inside them): a body of 1.9 M integers fails on the first, not on every item.
MAX_ALERTS = 1000
MAX_LABELS = 64
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 1024
MAX_ANNOTATION_CHARS = 8192
MAX_PROBLEMS = 20  # named in one answer; the rest are counted
MAX_EVENT_BYTES = 1_000_000  # an event's JSON, under the 1.5 MB Prefect's clients allow an event
ANNOTATION_KEPT = 1024  # characters of each annotation kept when an event is over MAX_EVENT_BYTES

Key = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_CHARS)]
Value = Annotated[str, StringConstraints(max_length=MAX_VALUE_CHARS)]
Text = Annotated[str, StringConstraints(max_length=MAX_ANNOTATION_CHARS)]
Url = Annotated[str, StringConstraints(max_length=2048)]


def _in_utc(value: datetime) -> datetime:
    """A time as UTC (naive: taken as UTC). Refused when UTC cannot hold it: year 1 at
    +01:00 or year 9999 at -01:00 is out of Python's range there, and made a 500."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"{value.isoformat()} is out of range once in UTC (years 1 to 9999); send an RFC 3339 time, "
            "e.g. 2026-12-07T10:00:00Z (Alertmanager sends UTC)"
        ) from None


When = Annotated[datetime, AfterValidator(_in_utc)]


class Alert(BaseModel):
    """One alert of an Alertmanager webhook (fields we do not use are ignored)."""

    model_config = ConfigDict(extra="ignore")
    status: Literal["firing", "resolved"]
    labels: dict[Key, Value] = Field(min_length=1, max_length=MAX_LABELS)
    annotations: dict[Key, Text] = Field(default_factory=dict, max_length=MAX_LABELS)
    startsAt: When
    endsAt: When | None = None
    generatorURL: Url = ""
    fingerprint: str | None = Field(default=None, min_length=1, max_length=256)


class Webhook(BaseModel):
    """Alertmanager's webhook payload, version 4."""

    model_config = ConfigDict(extra="ignore")
    version: Annotated[str, StringConstraints(max_length=16)] = "4"
    receiver: Value = ""
    status: Value = ""
    groupKey: Annotated[str, StringConstraints(max_length=MAX_ANNOTATION_CHARS)] = ""
    externalURL: Url = ""
    alerts: list[Alert] = Field(min_length=1, max_length=MAX_ALERTS)


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def alert_fingerprint(alert: Alert) -> str:
    """Alertmanager's fingerprint, or a hash of the labels when an old sender omits it."""
    if alert.fingerprint:
        return alert.fingerprint
    return hashlib.sha256(json.dumps(alert.labels, sort_keys=True).encode()).hexdigest()[:16]


def dedup_key(alert: Alert) -> str:
    return f"{alert_fingerprint(alert)}|{_iso(alert.startsAt)}|{alert.status}"


def to_event(alert: Alert, webhook: Webhook, received: float) -> dict[str, Any]:
    """The Prefect event for one alert (see the module docstring)."""
    labels = alert.labels
    named = [(labels[k], prefix, role) for k, prefix, role in RESOURCE_LABELS if labels.get(k)]
    alertname = labels.get("alertname", "unknown")
    base = {
        "planflow.alert.name": alertname,
        "planflow.alert.severity": labels.get("severity", ""),
        "planflow.alert.fingerprint": alert_fingerprint(alert),
    }
    if named:
        value, prefix, _ = named[0]
        resource = {"prefect.resource.id": prefix + value, "prefect.resource.name": value, **base}
    else:
        resource = {"prefect.resource.id": f"planflow.alert.{alertname}", "prefect.resource.name": alertname, **base}
    related = [
        {"prefect.resource.id": prefix + value, "prefect.resource.role": role, "prefect.resource.name": value}
        for value, prefix, role in named[1:]
    ]
    related.append(
        {
            "prefect.resource.id": f"planflow.alert-rule.{alertname}",
            "prefect.resource.role": "alert-rule",
            "prefect.resource.name": alertname,
        }
    )
    if alert.status == "resolved" and alert.endsAt and alert.endsAt.year > 1:
        occurred = _iso(alert.endsAt)
    elif alert.status == "firing":
        occurred = _iso(alert.startsAt)
    else:
        occurred = _iso(datetime.fromtimestamp(received, UTC))
    key = dedup_key(alert)
    event = {
        "id": str(uuid.uuid5(EVENT_NAMESPACE, key)),
        "occurred": occurred,
        "event": f"planflow.alert.{alert.status}",
        "resource": resource,
        "related": related,
        "payload": {
            "status": alert.status,
            "labels": labels,
            "annotations": alert.annotations,
            "startsAt": _iso(alert.startsAt),
            "endsAt": _iso(alert.endsAt) if alert.endsAt and alert.endsAt.year > 1 else None,
            "fingerprint": alert_fingerprint(alert),
            "generatorURL": alert.generatorURL,
            "receiver": webhook.receiver,
            "groupKey": webhook.groupKey,
            "receivedAt": _iso(datetime.fromtimestamp(received, UTC)),
        },
    }
    return _fitted(event)


def _fitted(event: dict[str, Any]) -> dict[str, Any]:
    """`event`, its annotations cut (to ANNOTATION_KEPT characters each, then fewer, then
    none) and its groupKey too, when it is over MAX_EVENT_BYTES as JSON. An alert within
    the webhook's bounds made an event of 3.4 MB with accented text (JSON escapes it),
    which the server's POST /events stored whole, in the spool and in Prefect's events
    table at every resend, where Prefect's own clients refuse an event over
    PREFECT_EVENTS_MAXIMUM_SIZE_BYTES (1.5 MB). Labels (what the alert is about) are never
    cut: the webhook's bounds keep them under it (64 values of 1024 characters: 0.8 MB at
    most, escaped)."""
    size = len(json.dumps(event))
    if size <= MAX_EVENT_BYTES:
        return event
    payload = event["payload"]
    annotations, group = payload["annotations"], payload["groupKey"]
    note = f" ... (cut by the planflow bridge: the event was {size} bytes as JSON)"
    payload["annotations_cut_from_bytes"] = size
    for kept in (ANNOTATION_KEPT, ANNOTATION_KEPT // 8, 0):
        payload["annotations"] = {k: v if len(v) <= kept else v[:kept] + note for k, v in annotations.items()}
        payload["groupKey"] = group if len(group) <= kept else group[:kept] + note
        if len(json.dumps(event)) <= MAX_EVENT_BYTES:
            return event
    raise EventTooLarge(
        f"alert {payload['labels'].get('alertname', '?')} (fingerprint {payload['fingerprint']}) makes an event of "
        f"{len(json.dumps(event))} bytes as JSON without its annotations, over the bridge's {MAX_EVENT_BYTES}: its "
        "labels are too long. Fix: shorter label values in its alert rule (a description belongs in annotations)"
    )


class EventTooLarge(ValueError):
    """An alert whose event is over MAX_EVENT_BYTES even with its annotations cut."""


def problems_of(exc: RequestValidationError) -> tuple[int, list[str]]:
    problems, status = [], 422
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        if error.get("type") == "json_invalid":
            status = 400
            reason = (error.get("ctx") or {}).get("error", "")
            problems.append(f"body is not valid JSON: {reason}".rstrip(": "))
            continue
        got = error.get("input")
        if error.get("type") == "missing" and tuple(error.get("loc", ())) == ("body",):
            status = 400
            problems.append("body is empty (not valid JSON): send Alertmanager's webhook object")
            continue
        if isinstance(got, (bytes, bytearray)):  # sent without Content-Type: application/json
            try:
                json.loads(got)
            except ValueError as bad:
                status = 400
                problems.append(f"body is not valid JSON: {bad}")
            else:
                status = 415
                problems.append("send the body with Content-Type: application/json")
            continue
        shown = json.dumps(got)[:80] if isinstance(got, (str, int, float, bool, type(None))) else type(got).__name__
        problems.append(f"{where}: {error.get('msg')} (got {shown})")
    if len(problems) > MAX_PROBLEMS:
        problems = [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problems"]
    return status, problems
