"""When an alert counts as delivered: Prefect *acted* on it, not merely stored it.

Why. Prefect's open-source server stores an accepted event, but its triggers and
actions run in memory: events accepted just before the server stops are in the event
store, yet no automation ever acts on them. And a storm of one alert on one pool made
one remediation run per alert (all but one skipped by the guard), queueing every other
pool's remediation behind them.

Design (robust against a Prefect restart at any moment, and against alerts that no
automation matches):

- **Tracked alerts.** Alerts about a work pool or queue (what the pool-level
  automations act on; spool.TRACKED_RESOURCES) are tracked in the spool by group,
  `alertname|resource`, from "forwarded" until "acted": an automation action event
  (`prefect.automation.action.triggered/executed/failed`) whose related
  `triggering-event` is the alert's event, read from POST /api/events/filter.
- **Coalescing, before any run exists.** A tracked alert whose group already has an
  alert of the same status sent on its own within `coalesce_seconds` is sent as
  `planflow.alert.coalesced` instead (no automation expects that name), related to the
  event it was coalesced into: a storm of one alert on one pool makes one remediation
  run, and every alert is still visible in Prefect's event feed. The other status (a
  `resolved` after a `firing`) ends the group's window, so a re-fire is acted on.
- **Reconciling after a restart.** The forwarder probes /api/health while idle and
  during its backoff. When Prefect was unreachable and answers again, the tracked
  alerts it had accepted within `confirm_seconds` before it was last seen up, and that
  show no action, are queued again with a new event id (Prefect's event store would
  drop the old id as a duplicate) and `resent_of` naming the first. Only alerts from
  just before the outage are re-sent: in normal operation actions follow their event
  within a second or two, so an older alert without one is not waiting for one (no
  automation matches it, e.g. its AlertRoute says "none").
- **At least once, bounded.** An action that ran but whose event Prefect lost in the
  stop leads to a second remediation run: the remediation guard (one failover per pool)
  makes it a no-op. Resends are counted per alert (`max_resends`), so a server that
  keeps dying cannot make one alert loop forever.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from planflow.monitoring.bridge.spool import Pending, Spool

log = logging.getLogger("planflow.bridge")

COALESCED_EVENT = "planflow.alert.coalesced"
ACTION_EVENTS = "prefect.automation.action."
_IDS_PER_QUERY = 100


def coalesced_event(event: dict[str, Any], leader_event_id: str) -> dict[str, Any]:
    """`event` renamed to planflow.alert.coalesced, related to its leader's event."""
    return {
        **event,
        "event": COALESCED_EVENT,
        "related": [
            *event.get("related", []),
            {"prefect.resource.id": f"prefect.event.{leader_event_id}", "prefect.resource.role": "coalesced-into"},
        ],
        "payload": {**event.get("payload", {}), "coalesced_into": leader_event_id},
    }


def resent_event(event: dict[str, Any], resends: int) -> dict[str, Any]:
    """`event` with a new id, naming the event it re-sends."""
    payload = event.get("payload", {})
    return {
        **event,
        "id": str(uuid.uuid4()),
        "payload": {**payload, "resent_of": payload.get("resent_of", event["id"]), "resends": resends + 1},
    }


class Coalescer:
    """Decides, for one batch of pending alerts, which are sent as themselves and which
    as coalesced into the group's leader (see the module docstring)."""

    def __init__(self, spool: Spool, window: float) -> None:
        self.spool, self.window = spool, window

    def plan(self, rows: list[Pending], now: float) -> tuple[list[str], list[tuple[int, int]]]:
        """The events to send (in order) and the (seq, leader seq) pairs coalesced."""
        events, pairs = [], []
        leaders: dict[str, tuple[int, str, str]] = {}  # group -> (seq, status, event id) in this batch
        for row in rows:
            if row.grp is None:
                events.append(row.event)
                continue
            leader = leaders.get(row.grp)
            if leader is None:
                found = self.spool.leader(row.grp, now - self.window)
                leader = (found.seq, found.status, found.event_id) if found else None
            if leader is not None and leader[1] == row.status and leader[0] != row.seq:
                events.append(json.dumps(coalesced_event(json.loads(row.event), leader[2])))
                pairs.append((row.seq, leader[0]))
                continue
            leaders[row.grp] = (row.seq, row.status or "", json.loads(row.event)["id"])
            events.append(row.event)
        return events, pairs


async def acted_on(http: httpx.AsyncClient, api_url: str, event_ids: list[str], since: float) -> set[str]:
    """Which of `event_ids` an automation acted on: the ids named as `triggering-event`
    by Prefect's `prefect.automation.action.*` events that occurred since `since`."""
    found: set[str] = set()
    start = datetime.fromtimestamp(since, UTC).isoformat()
    for i in range(0, len(event_ids), _IDS_PER_QUERY):
        wanted = [f"prefect.event.{event_id}" for event_id in event_ids[i : i + _IDS_PER_QUERY]]
        body: dict[str, Any] = {
            "filter": {
                "occurred": {"since": start, "until": (datetime.now(UTC) + timedelta(days=1)).isoformat()},
                "event": {"prefix": [ACTION_EVENTS]},
                "related": {"resources_in_roles": [[w, "triggering-event"] for w in wanted]},
                "order": "ASC",
            },
            "limit": 50,
        }
        response = await http.post(f"{api_url}/events/filter", json=body)
        response.raise_for_status()
        data = response.json()
        while True:
            for event in data.get("events", []):
                for related in event.get("related", []):
                    if related.get("prefect.resource.role") == "triggering-event":
                        found.add(related["prefect.resource.id"].removeprefix("prefect.event."))
            if not data.get("next_page"):
                break
            response = await http.get(data["next_page"])
            response.raise_for_status()
            data = response.json()
    return found & set(event_ids)


class Reconciler:
    """Confirms tracked alerts as acted on, and after a Prefect restart queues again the
    ones it lost (see the module docstring)."""

    def __init__(self, spool: Spool, api_url: str, confirm_seconds: float = 30.0, max_resends: int = 3) -> None:
        self.spool, self.api_url = spool, api_url
        self.confirm_seconds, self.max_resends = confirm_seconds, max_resends

    async def confirm(self, http: httpx.AsyncClient, since: float, until: float | None = None) -> list[int]:
        """Mark acted the unconfirmed alerts sent between `since` and `until` that
        Prefect acted on; returns the seqs still without an action."""
        rows = self.spool.unconfirmed(since, until)
        if not rows:
            return []
        acted = await acted_on(http, self.api_url, [event_id for _, event_id in rows], since - 60)
        self.spool.acted_on([seq for seq, event_id in rows if event_id in acted])
        return [seq for seq, event_id in rows if event_id not in acted]

    async def after_restart(self, http: httpx.AsyncClient, last_up: float) -> list[int]:
        """Prefect is back after being unreachable since `last_up`: queue again the
        tracked alerts accepted within `confirm_seconds` before it that show no action."""
        lost = await self.confirm(http, last_up - self.confirm_seconds, last_up + 1)
        resent = []
        for seq in lost:
            if self.spool.resends_of(seq) >= self.max_resends:
                log.error("alert %s: Prefect lost it %d times; not re-sending it again", seq, self.max_resends)
                continue
            new_id = self.spool.resend(seq, resent_event)
            resent.append(seq)
            log.warning("alert %s: no automation acted on it before Prefect stopped; re-sent as %s", seq, new_id)
        return resent
