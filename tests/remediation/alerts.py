"""Send Alertmanager webhooks to the real bridge, as Alertmanager does."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx


def bridge_token(paths) -> str:
    from planflow.monitoring.bridge import TOKEN_FILE_NAME, resolve_token
    from planflow.ops.services import monitoring_dir

    return resolve_token(monitoring_dir(paths) / TOKEN_FILE_NAME)


def alert(
    alertname: str,
    labels: dict[str, str],
    status: str = "firing",
    starts: datetime | None = None,
    fingerprint: str | None = None,
) -> dict:
    starts = starts or datetime.now(UTC)
    body = {
        "status": status,
        "labels": {"alertname": alertname, "severity": "critical", **labels},
        "annotations": {"summary": f"{alertname} (test)"},
        "startsAt": starts.isoformat().replace("+00:00", "Z"),
        "fingerprint": fingerprint or uuid.uuid4().hex[:16],
    }
    if status == "resolved":
        body["endsAt"] = (starts + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    return body


def post(bridge_url: str, token: str, alerts: list[dict]) -> httpx.Response:
    payload = {
        "version": "4",
        "status": alerts[0]["status"],
        "receiver": "planflow-bridge",
        "groupKey": '{}:{alertname="test"}',
        "externalURL": "http://127.0.0.1:9093",
        "alerts": alerts,
    }
    response = httpx.post(
        f"{bridge_url}/alerts", json=payload, timeout=30, headers={"Authorization": f"Bearer {token}"}
    )
    response.raise_for_status()
    return response
