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
  the Prefect API in order, retrying with exponential backoff while it is down.
- **Exactly once.** The spool's unique key is (fingerprint, startsAt, status), so the
  duplicates Alertmanager may send are dropped; the event id is derived from that key,
  so a batch re-sent after a lost answer is deduplicated by Prefect's event store.
- **Strict but tolerant input.** Each alert's own `status` decides its event (one
  payload can hold firing and resolved alerts); unknown fields are ignored; malformed
  bodies get a 4xx naming every problem; bodies above the limit get 413.

The event's resource is the most specific thing the alert's labels name (flow run,
pipeline, deployment, work pool, work queue, flow), the others are related resources,
and the payload holds labels, annotations, startsAt, endsAt and fingerprint.

Run it: `python -m planflow.monitoring.bridge --port 9095`; its API is described at /docs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prefect.blocks.system import Secret
from prefect.settings import PREFECT_API_URL, temporary_settings
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from planflow.monitoring import prefect_api
from planflow.monitoring.metrics import BridgeMetrics
from planflow.settings import StatePaths, apply_client_env, settings

log = logging.getLogger("planflow.bridge")

TOKEN_ENV = "PLANFLOW_BRIDGE_TOKEN"
TOKEN_FILE_NAME = "bridge.token"
SPOOL_FILE_NAME = "bridge-spool.sqlite3"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
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


class BridgeError(RuntimeError):
    """The bridge cannot start: no token, or no place for its spool."""


# -- the webhook body ------------------------------------------------------------------
class Alert(BaseModel):
    """One alert of an Alertmanager webhook (fields we do not use are ignored)."""

    model_config = ConfigDict(extra="ignore")
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(min_length=1)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str | None = Field(default=None, min_length=1, max_length=256)


class Webhook(BaseModel):
    """Alertmanager's webhook payload, version 4."""

    model_config = ConfigDict(extra="ignore")
    version: str = "4"
    receiver: str = ""
    status: str = ""
    groupKey: str = ""
    externalURL: str = ""
    alerts: list[Alert] = Field(min_length=1)


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
    return {
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


# -- the spool -------------------------------------------------------------------------
class Spool:
    """Alerts stored durably until the Prefect API accepted their events."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS alerts (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                key TEXT NOT NULL UNIQUE,          -- fingerprint|startsAt|status
                event TEXT NOT NULL,               -- the Prefect event, JSON
                received REAL NOT NULL,
                forwarded REAL,                    -- NULL until Prefect accepted it
                attempts INTEGER NOT NULL DEFAULT 0,
                error TEXT                         -- set when Prefect refused the event
            );
            CREATE INDEX IF NOT EXISTS alerts_pending ON alerts (forwarded, seq);
            """
        )

    def store(self, items: list[tuple[str, str, float]]) -> tuple[int, list[str]]:
        """Insert (key, event json, received); returns (new count, duplicate keys)."""
        duplicates = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for key, event, received in items:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO alerts (key, event, received) VALUES (?, ?, ?)", (key, event, received)
                    )
                    if cur.rowcount == 0:
                        duplicates.append(key)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(items) - len(duplicates), duplicates

    def pending(self, limit: int) -> list[tuple[int, str]]:
        with self._lock:
            return self._db.execute(
                "SELECT seq, event FROM alerts WHERE forwarded IS NULL ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()

    def mark(self, seqs: list[int], error: str | None = None) -> None:
        now = time.time()
        with self._lock:
            self._db.executemany(
                "UPDATE alerts SET forwarded = ?, error = ?, attempts = attempts + 1 WHERE seq = ?",
                [(now, error, s) for s in seqs],
            )

    def attempted(self, seqs: list[int]) -> None:
        with self._lock:
            self._db.executemany("UPDATE alerts SET attempts = attempts + 1 WHERE seq = ?", [(s,) for s in seqs])

    def depth(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM alerts WHERE forwarded IS NULL").fetchone()[0]

    def oldest_age(self) -> float:
        with self._lock:
            row = self._db.execute("SELECT min(received) FROM alerts WHERE forwarded IS NULL").fetchone()
        return max(0.0, time.time() - row[0]) if row and row[0] else 0.0

    def prune(self, older_than_seconds: float) -> None:
        """Forget forwarded alerts older than the dedup window."""
        with self._lock:
            self._db.execute(
                "DELETE FROM alerts WHERE forwarded IS NOT NULL AND forwarded < ?", (time.time() - older_than_seconds,)
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- the token -------------------------------------------------------------------------
def resolve_token(token_file: Path, secret_block: str | None = None) -> str:
    """PLANFLOW_BRIDGE_TOKEN, else the Secret block, else the token file (created once)."""
    token = settings().bridge_token
    explicit = token.get_secret_value().strip() if token else ""
    if explicit:
        return explicit
    if secret_block:
        return str(Secret.load(secret_block).get()).strip()
    try:
        existing = token_file.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


# -- forwarding ------------------------------------------------------------------------
class _Stopping(Exception):
    """The forwarder was stopped while it waited to retry."""


class Forwarder:
    """Sends spooled events to POST /api/events, in order, with backoff while it fails."""

    def __init__(
        self,
        spool: Spool,
        metrics: BridgeMetrics,
        api_url: str,
        batch: int = 200,
        max_backoff: float = 30.0,
        retention: float = 7 * 86400,
    ) -> None:
        self.spool, self.metrics, self.api_url = spool, metrics, api_url
        self.batch, self.max_backoff, self.retention = batch, max_backoff, retention
        self.wake = asyncio.Event()
        self.stop = asyncio.Event()

    async def _post(self, http: httpx.AsyncClient, events: list[str]) -> httpx.Response:
        return await http.post(
            f"{self.api_url}/events", content="[" + ",".join(events) + "]", headers={"Content-Type": "application/json"}
        )

    async def forward_once(self, http: httpx.AsyncClient) -> int:
        """Forward one batch; returns how many were accepted (raises when Prefect fails)."""
        rows = self.spool.pending(self.batch)
        if not rows:
            return 0
        response = await self._post(http, [event for _, event in rows])
        if response.status_code == 422:
            # One bad event must not block the rest: send them one by one.
            accepted = 0
            for seq, event in rows:
                single = await self._post(http, [event])
                if single.status_code == 422:
                    self.spool.mark([seq], error=single.text[:500])
                    self.metrics.forward_failures.inc()
                    log.error("Prefect refused event %s: %s", seq, single.text[:500])
                else:
                    single.raise_for_status()
                    self.spool.mark([seq])
                    accepted += 1
            self.metrics.forwarded.inc(accepted)
            return accepted
        response.raise_for_status()
        self.spool.mark([seq for seq, _ in rows])
        self.metrics.forwarded.inc(len(rows))
        return len(rows)

    async def run(self) -> None:
        """Forward until stopped: a batch whenever there is one (woken by new alerts,
        else once a second); while Prefect fails, the same batch again with exponential
        backoff (0.25 s doubling up to `max_backoff`), never dropping it."""
        last_prune = 0.0
        until_sent = AsyncRetrying(
            retry=retry_if_exception_type(Exception),  # Prefect down, timing out, 5xx
            wait=wait_exponential(multiplier=0.25, min=0.25, max=self.max_backoff),
            sleep=self._backoff,
            before_sleep=self._failed,
        )
        async with httpx.AsyncClient(timeout=10.0, headers=prefect_api.auth_headers()) as http:
            while not self.stop.is_set():
                try:
                    sent = await until_sent(self.forward_once, http)
                except _Stopping:
                    return
                if time.time() - last_prune > 3600:
                    self.spool.prune(self.retention)
                    last_prune = time.time()
                if sent == 0:
                    await self._sleep(1.0, wakeable=True)

    def _failed(self, attempt: RetryCallState) -> None:
        self.metrics.forward_failures.inc()
        exc = attempt.outcome.exception() if attempt.outcome else None
        wait = attempt.next_action.sleep if attempt.next_action else 0.0
        log.warning("forwarding to %s failed (%r); retrying in %.2f s", self.api_url, exc, wait)

    async def _backoff(self, seconds: float) -> None:
        await self._sleep(seconds, wakeable=False)
        if self.stop.is_set():
            raise _Stopping

    async def _sleep(self, seconds: float, wakeable: bool) -> None:
        waiters = [asyncio.ensure_future(self.stop.wait())]
        if wakeable:
            waiters.append(asyncio.ensure_future(self.wake.wait()))
        done, pending = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        self.wake.clear()


# -- the app ---------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: refuse bodies above `limit` bytes with 413 before parsing them."""

    def __init__(self, app: Any, limit: int, metrics: BridgeMetrics) -> None:
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > self.limit
        body = bytearray()
        more = True
        while more and not too_large:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            too_large = len(body) > self.limit
        if too_large:
            self.metrics.rejected.labels("too_large").inc()
            response = JSONResponse(
                status_code=413,
                content={
                    "error": f"request body larger than the limit of {self.limit} bytes; "
                    "split the payload (Alertmanager: lower max_alerts) or raise "
                    "--max-body-bytes"
                },
            )
            return await response(scope, receive, send)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def _problems(exc: RequestValidationError) -> tuple[int, list[str]]:
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
    return status, problems


def create_app(
    spool_path: Path,
    token: str,
    prefect_api_url: str | None = None,
    registry: CollectorRegistry | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    forward: bool = True,
    max_backoff: float = 30.0,
) -> FastAPI:
    """The bridge as an ASGI app; its lifespan runs the forwarder."""
    if not token:
        raise BridgeError("empty bearer token: set PLANFLOW_BRIDGE_TOKEN or a token file")
    registry = registry if registry is not None else CollectorRegistry()
    metrics = BridgeMetrics(registry)
    spool = Spool(spool_path)
    metrics.spool_depth.set_function(spool.depth)
    metrics.oldest_pending_age.set_function(spool.oldest_age)
    api_url = prefect_api.api_url(prefect_api_url)
    forwarder = Forwarder(spool, metrics, api_url, max_backoff=max_backoff)
    expected = token.encode()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(forwarder.run()) if forward else None
        yield
        forwarder.stop.set()
        if task:
            await task
        spool.close()

    app = FastAPI(
        title="planflow alert bridge",
        version="1",
        description=__doc__.split("\n\n")[0],
        lifespan=lifespan,
    )
    app.state.spool, app.state.metrics, app.state.forwarder = spool, metrics, forwarder
    app.state.registry = registry

    def require_token(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            metrics.rejected.labels("unauthorized").inc()
            raise HTTPException(
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
                detail="missing or wrong bearer token: send `Authorization: Bearer <token>` "
                "(Alertmanager: http_config.authorization.credentials_file)",
            )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # one shape for every refusal: {"error": ..., "detail": ...}
        return JSONResponse(
            status_code=exc.status_code, headers=exc.headers, content={"error": exc.detail, "detail": exc.detail}
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, problems = _problems(exc)
        metrics.rejected.labels("malformed_json" if status == 400 else "invalid").inc()
        return JSONResponse(
            status_code=status,
            content={"error": "malformed Alertmanager webhook body: " + "; ".join(problems), "problems": problems},
        )

    @app.post(
        "/alerts",
        dependencies=[Depends(require_token)],
        summary="Receive an Alertmanager webhook (version 4)",
        responses={
            400: {"description": "not JSON"},
            401: {"description": "no or bad token"},
            413: {"description": "body too large"},
            422: {"description": "not an Alertmanager webhook"},
            503: {"description": "could not store; retry"},
        },
    )
    async def receive_alerts(webhook: Webhook) -> dict[str, int]:
        """Store each alert durably, then answer; events are forwarded in the background."""
        received = time.time()
        items, seen = [], set()
        for alert in webhook.alerts:
            key = dedup_key(alert)
            if key in seen:  # the same alert twice in one payload
                continue
            seen.add(key)
            items.append((key, json.dumps(to_event(alert, webhook, received)), received))
        try:
            stored, duplicates = await asyncio.to_thread(spool.store, items)
        except sqlite3.Error as exc:
            metrics.rejected.labels("store_failed").inc()
            log.error("could not store alerts in %s: %r", spool.path, exc)
            raise HTTPException(status_code=503, detail=f"could not store the alerts: {exc}") from exc
        duplicate_count = len(duplicates) + len(webhook.alerts) - len(items)
        for alert in webhook.alerts:
            metrics.received.labels(alert.status).inc()
        metrics.duplicates.inc(duplicate_count)
        forwarder.wake.set()
        return {"stored": stored, "duplicates": duplicate_count}

    @app.get("/metrics", summary="The bridge's own Prometheus metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", summary="Liveness, and how many alerts wait in the spool")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "spool_depth": spool.depth()}

    return BodyLimitApp(app, max_body_bytes, metrics)


class BodyLimitApp(BodyLimit):
    """The FastAPI app wrapped in the body limit; `.app` is the FastAPI app itself."""

    @property
    def state(self) -> Any:
        return self.app.state

    def openapi(self) -> dict[str, Any]:
        return self.app.openapi()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Alertmanager webhook -> Prefect events.")
    parser.add_argument("--port", type=int, default=9095)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--prefect-api-url", default=None)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the spool and token file live (default: <.planflow>/monitoring)",
    )
    parser.add_argument(
        "--token-secret-block", default=None, help="name of a Prefect Secret block holding the bearer token"
    )
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    paths = StatePaths.discover()
    # Prefect read its settings when this module imported it: the embedded server's url
    # (which apply_client_env finds) is passed on explicitly, to the forwarder and to
    # the Secret block's client alike.
    api_url = args.prefect_api_url or apply_client_env(paths)["PREFECT_API_URL"]
    state_dir = args.state_dir or paths.home / "monitoring"
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        token = resolve_token(state_dir / TOKEN_FILE_NAME, args.token_secret_block)
    app = create_app(state_dir / SPOOL_FILE_NAME, token, api_url, max_body_bytes=args.max_body_bytes)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
