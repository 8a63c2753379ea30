"""Alertmanager webhook -> Prefect events: one `planflow.alert.firing` or
`planflow.alert.resolved` event per alert.

Guarantees, and how:

- **Only Alertmanager gets in.** Every webhook call carries `Authorization: Bearer
  <token>` (Alertmanager reads it from `credentials_file`); the token comes from
  PLANFLOW_BRIDGE_TOKEN, a Prefect Secret block (`--token-secret-block`), or a token
  file in the state folder created on first start. Compared in constant time.
- **Nothing lost.** The answer is 2xx only once every alert of the payload is committed
  to a SQLite spool (WAL, synchronous=FULL) under the state folder; a failure to
  store answers 503 and Alertmanager retries. A background loop forwards the spool to
  the Prefect API in order, retrying with exponential backoff while it is down (cut
  short as soon as its /api/health answers again).
- **Acted on, once per storm.** An alert about a work pool or queue is done when a
  Prefect automation acted on it; the ones Prefect lost in a restart are re-sent, and a
  storm of one alert on one pool is coalesced into one before any run exists
  (delivery.py).
- **Exactly once.** The spool's unique key is (fingerprint, startsAt, status), so the
  duplicates Alertmanager may send are dropped; the event id is derived from that key,
  so a batch re-sent after a lost answer is deduplicated by Prefect's event store.
- **Cheap refusals.** The token is checked before a byte of the body is read; bodies
  above the limit get 413 and slow ones 408; the schema is bounded (alerts, labels,
  sizes) before any alert object is made. /health is liveness; /ready fails, naming
  the cause, when the spool cannot store or Prefect has not taken events for a while.
- **Strict but tolerant input.** Each alert's own `status` decides its event (one
  payload can hold firing and resolved alerts); unknown fields are ignored; malformed
  bodies get a 4xx naming every problem; bodies above the limit get 413.

The event's resource is the most specific thing the alert's labels name (flow run,
pipeline, deployment, work pool, work queue, flow), the others are related resources,
and the payload holds labels, annotations, startsAt, endsAt and fingerprint.

Run it: `python -m planflow.monitoring.bridge --port 9095`; its API is described at /docs.
"""

from planflow.monitoring.bridge.app import DEFAULT_MAX_BODY_BYTES, SPOOL_FILE_NAME, BridgeError, create_app
from planflow.monitoring.bridge.forwarder import Forwarder
from planflow.monitoring.bridge.spool import Spool
from planflow.monitoring.bridge.token import TOKEN_ENV, TOKEN_FILE_NAME, TokenError, check_token, resolve_token
from planflow.monitoring.bridge.webhook import Alert, Webhook, alert_fingerprint, dedup_key, to_event

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "SPOOL_FILE_NAME",
    "TOKEN_ENV",
    "TOKEN_FILE_NAME",
    "Alert",
    "BridgeError",
    "Forwarder",
    "Spool",
    "TokenError",
    "Webhook",
    "alert_fingerprint",
    "check_token",
    "create_app",
    "dedup_key",
    "resolve_token",
    "to_event",
]
