"""Watching the self-healing loop from outside, for `planflow demo heal` and the tests:
bounded waits that say what happened instead, and when the loop is quiet about a set of
pools (nothing pending in Prometheus, every alert answered, no remediation due).

Nothing here acts on a pool; the remediation flows do.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import PREFECT_API_URL

from planflow.monitoring.events import read_events
from planflow.monitoring.prefect_api import auth_headers
from planflow.ops import services, waiting
from planflow.prefect.blocks.alert_route import load_routes
from planflow.remediation.names import REMEDIATION_POOL
from planflow.settings import StatePaths

LOOK_AROUND = (
    "Look at `planflow stack status`, Prometheus's /alerts page and the "
    "planflow-remediation flow runs in the Prefect UI."
)


class HealError(RuntimeError):
    """A scenario step did not happen in time; the message says which and where to look."""


def _heal_error(message: str) -> HealError:
    return HealError(f"{message}. {LOOK_AROUND}")


# The one bounded wait (ops/waiting.py), failing with HealError and where to look.
wait_for = functools.partial(waiting.wait_for, error=_heal_error)


def events_about(prefix: str, resource: str, since: dt.datetime) -> list[dict]:
    """Events named `prefix...` since `since` whose resource, or a related one, is `resource`."""
    return [
        e
        for e in read_events(str(PREFECT_API_URL.value()).rstrip("/"), None, prefix, since, auth_headers())
        if e["resource"].get("prefect.resource.id") == resource
        or any(r.get("prefect.resource.id") == resource for r in e.get("related", []))
    ]


def remediation_story(pool: str, since: dt.datetime) -> str:
    """The alerts and remediation outcomes about `pool` since `since`, one line each (for
    a step that did not happen: what did happen instead)."""
    lines = []
    for prefix in ("planflow.alert.", "planflow.remediation.outcome"):
        for e in events_about(prefix, f"prefect.work-pool.{pool}", since):
            payload = e.get("payload", {})
            what = payload.get("labels", {}).get("alertname") or payload.get("action")
            lines.append(
                f"{e['occurred']} {e['event']} {what or ''} {payload.get('outcome') or ''} "
                f"{payload.get('reason') or ''}".rstrip()
            )
    return "\n".join(sorted(lines)[-15:]) or "no alert or remediation event about it"


def wait_about(
    pool: str, since: dt.datetime, check: Callable[[], Any], timeout: float, what: str, interval: float = 1.0
) -> Any:
    """wait_for, and on a timeout say what the alerts and remediations about `pool` did."""
    try:
        return wait_for(check, timeout, what, interval)
    except HealError as exc:
        raise HealError(f"{exc}\nWhat happened about {pool}:\n{remediation_story(pool, since)}") from None


def remediation_settled(client: SyncPrefectClient) -> bool:
    """No remediation flow run due now is unfinished (later re-checks do not count)."""
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    runs = client.read_flow_runs(
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[REMEDIATION_POOL])),
        limit=200,
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
    )
    return not [
        r
        for r in runs
        if r.state
        and not r.state.is_final()
        and not (
            r.state.is_scheduled()
            and r.state.state_details.scheduled_time
            and r.state.state_details.scheduled_time > soon
        )
    ]


# -- is the loop quiet about these pools? ---------------------------------------------
def prometheus_url() -> str:
    """The running stack's Prometheus (`planflow stack up`), else HealError with the fix."""
    found = services.status(StatePaths.discover()).get("prometheus")
    if found is None or found.state != "running":
        raise HealError("Prometheus is not running. Fix: planflow stack up --profile fast")
    return found.url


def _query(prometheus: str, expr: str) -> list[dict]:
    answer = httpx.get(f"{prometheus.rstrip('/')}/api/v1/query", params={"query": expr}, timeout=10)
    answer.raise_for_status()
    return answer.json()["data"]["result"]


def prometheus_quiet(prometheus: str, pools: Iterable[str]) -> bool:
    """Prometheus scraped every pool healthy (ready or paused) and, having evaluated the
    rules since, holds no pending or firing alert about any of them."""
    pools = sorted(pools)
    selector = "|".join(pools)
    healthy = _query(
        prometheus, f'planflow_prefect_work_pool_status{{work_pool=~"{selector}",status=~"ready|paused"}} == 1'
    )
    if {s["metric"].get("work_pool") for s in healthy} != set(pools):
        return False
    return not _query(prometheus, f'ALERTS{{work_pool=~"{selector}"}}')


def unanswered_alerts(pools: Iterable[str], since: dt.datetime) -> list[str]:
    """The alerts about `pools` since `since` that a remediation answers (their route says
    failover or rescale) and that are not answered yet: an alert event without a
    remediation outcome related to it, or a firing alert whose resolution has not come."""
    acting = {name for name, route in load_routes().items() if route.action in ("failover", "rescale")}
    alerts: dict[str, dict] = {}
    for pool in pools:
        for e in events_about("planflow.alert.", f"prefect.work-pool.{pool}", since):
            if e.get("payload", {}).get("labels", {}).get("alertname") in acting:
                alerts[e["id"]] = e
    answered = {
        r["prefect.resource.id"].removeprefix("prefect.event.")
        for e in read_events(
            str(PREFECT_API_URL.value()).rstrip("/"), None, "planflow.remediation.outcome", since, auth_headers()
        )
        for r in e.get("related", [])
        if r.get("prefect.resource.role") == "triggering-event"
    }
    resolved = {e["payload"].get("fingerprint") for e in alerts.values() if e["event"] == "planflow.alert.resolved"}
    missing = []
    for e in alerts.values():
        name = f"{e['payload']['labels'].get('alertname')} {e['event'].rsplit('.', 1)[-1]} ({e['id']})"
        if e["id"] not in answered:
            missing.append(f"{name}: no remediation outcome yet")
        elif e["event"] == "planflow.alert.firing" and e["payload"].get("fingerprint") not in resolved:
            missing.append(f"{name}: not resolved yet")
    return missing


def wait_until_quiet(
    client: SyncPrefectClient, pools: list[str], since: dt.datetime, prometheus: str, timeout: float = 120.0
) -> None:
    """Wait (bounded) until the loop has nothing left to say about `pools`: Prometheus
    quiet about them, every alert about them answered, no remediation run due."""
    names = ", ".join(pools)
    wait_for(lambda: prometheus_quiet(prometheus, pools), timeout, f"Prometheus to see {names} healthy, no alert")
    left: list[str] = []

    def answered() -> bool:
        left[:] = unanswered_alerts(pools, since)
        return not left

    try:
        wait_for(answered, timeout, f"the alerts about {names} to be answered")
    except HealError as exc:
        raise HealError(f"{exc}\nStill open:\n" + "\n".join(left)) from None
    wait_for(lambda: remediation_settled(client), timeout, "earlier remediation runs to finish")
