"""Read planflow's alert events back from the Prefect server's event feed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from planflow.monitoring import prefect_api


def read_events(
    api_url: str,
    resource_prefix: str | None = None,
    name_prefix: str = "planflow.alert.",
    since: datetime | None = None,
    headers: dict | None = None,
) -> list[dict]:
    """Every event under `name_prefix` (optionally about resources starting with
    `resource_prefix`) from the Prefect server's events API, following pages."""
    since = since or datetime.now(UTC) - timedelta(days=1)
    body: dict[str, Any] = {
        "filter": {
            "occurred": {"since": since.isoformat(), "until": (datetime.now(UTC) + timedelta(days=3650)).isoformat()},
            "event": {"prefix": [name_prefix]},
            "order": "ASC",
        },
        "limit": 50,
    }
    if resource_prefix:
        body["filter"]["any_resource"] = {"id_prefix": [resource_prefix]}
    out: list[dict] = []
    with httpx.Client(timeout=30, headers=headers or {}, verify=prefect_api.tls_verify()) as http:
        page = http.post(f"{api_url}/events/filter", json=body)
        page.raise_for_status()
        data = page.json()
        out.extend(data["events"])
        while data.get("next_page"):
            page = http.get(data["next_page"])
            page.raise_for_status()
            data = page.json()
            out.extend(data["events"])
    return out


def wait_for_event(
    api_url: str, resource_prefix: str, name: str, since: datetime, timeout: float, headers: dict | None = None
) -> dict | None:
    """The first event called `name` about a resource starting with `resource_prefix`
    that occurred after `since`, reading the feed every second for up to `timeout`
    seconds; None if none came by then (the caller says what that means)."""

    def first() -> dict | None:
        return next(
            (e for e in read_events(api_url, resource_prefix, name, since, headers) if e["event"] == name), None
        )

    until_found = Retrying(
        retry=retry_if_result(lambda found: found is None),
        wait=wait_fixed(1.0),
        stop=stop_after_delay(timeout),
        retry_error_callback=lambda attempt: None,
    )
    return until_found(first)
