"""The bridge's ASGI app: the guard (token before the body is read, then the body within
a size and a time limit), the webhook endpoint that stores before it answers, /metrics,
/health (liveness) and /ready (readiness, with its causes); its lifespan runs the
forwarder."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import sqlite3
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from planflow.monitoring import prefect_api
from planflow.monitoring.bridge.forwarder import Forwarder
from planflow.monitoring.bridge.spool import Spool
from planflow.monitoring.bridge.webhook import EventTooLarge, Webhook, dedup_key, problems_of, to_event
from planflow.monitoring.metrics import BridgeMetrics

log = logging.getLogger("planflow.bridge")

SPOOL_FILE_NAME = "bridge-spool.sqlite3"
# Alertmanager sends one group per call: MAX_ALERTS alerts of ~1-2 KB fit.
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024  # request line and headers; Alertmanager sends < 1 KB
DEFAULT_BODY_TIMEOUT = 10.0  # seconds to send the whole body (a slow body is cut)
DEFAULT_UNDELIVERED_AFTER = 60.0  # not ready when forwarding failed this long
UNAUTHORIZED = (
    "missing or wrong bearer token: send `Authorization: Bearer <token>` "
    "(Alertmanager: http_config.authorization.credentials_file)"
)
TITLE = (
    "Alertmanager webhook -> Prefect events: one `planflow.alert.firing` or `planflow.alert.resolved` event per alert."
)


class BridgeError(RuntimeError):
    """The bridge cannot start: no token, or no place for its spool."""


async def _refuse(send: Any, status: int, error: str, headers: dict[str, str] | None = None) -> None:
    """Answer `status` with {"error", "detail"} and close (the body may be unread)."""
    body = json.dumps({"error": error, "detail": error}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: headers above MAX_HEADER_BYTES get 431; on every POST the bearer
    token is checked before a byte of the body is read; then the body must fit in `limit` bytes (413) and arrive
    within `body_timeout` seconds (408), else the connection is closed."""

    def __init__(self, app: Any, token: bytes, limit: int, body_timeout: float, metrics: BridgeMetrics) -> None:
        self.app, self.token, self.limit, self.body_timeout, self.metrics = app, token, limit, body_timeout, metrics

    def _authorized(self, header: bytes) -> bool:
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = len(scope.get("raw_path") or b"") + sum(len(k) + len(v) + 4 for k, v in scope.get("headers") or [])
        if size > MAX_HEADER_BYTES:
            self.metrics.rejected.labels("headers_too_large").inc()
            return await _refuse(send, 431, f"request headers larger than {MAX_HEADER_BYTES} bytes")
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if not self._authorized(headers.get(b"authorization", b"")):
            self.metrics.rejected.labels("unauthorized").inc()
            return await _refuse(send, 401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
        declared = headers.get(b"content-length", b"")
        too_large = declared.isdigit() and int(declared) > self.limit
        body = bytearray()
        more = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        while more and not too_large:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                self.metrics.rejected.labels("slow_body").inc()
                return await _refuse(
                    send,
                    408,
                    f"request body not received within {self.body_timeout:g} s ({len(body)} bytes came); "
                    "send it at once, or raise --body-timeout",
                )
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            too_large = len(body) > self.limit
        if too_large:
            self.metrics.rejected.labels("too_large").inc()
            return await _refuse(
                send,
                413,
                f"request body larger than the limit of {self.limit} bytes; split the payload "
                "(Alertmanager: lower max_alerts) or raise --max-body-bytes",
            )
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def _storage_error(exc: sqlite3.Error, spool: Spool) -> HTTPException:
    """507 naming the folder when the disk is full; 503 (Alertmanager retries) otherwise."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
        return HTTPException(
            status_code=507,
            detail=f"disk full at {spool.path.parent}: the alerts could not be stored ({exc}); free space there",
        )
    return HTTPException(status_code=503, detail=f"could not store the alerts in {spool.path}: {exc}")


def _delivery_problem(forwarder: Forwarder, after: float) -> str | None:
    """Why the forwarder has not delivered for longer than `after` seconds, or None."""
    if forwarder.failing_since is None or time.time() - forwarder.failing_since <= after:
        return None
    exc, url = forwarder.last_error, forwarder.api_url
    since = f"for {time.time() - forwarder.failing_since:.0f} s"
    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (401, 403):
        return (
            f"cannot deliver to Prefect {since}: {url} answered {exc.response.status_code} "
            f"{exc.response.reason_phrase}. Fix: set PREFECT_API_AUTH_STRING to the server's auth string"
        )
    if isinstance(exc, httpx.HTTPStatusError):
        return f"cannot deliver to Prefect {since}: {url} answered {exc.response.status_code}"
    return f"cannot deliver to Prefect {since}: {url} is unreachable ({exc!r})"


def create_app(
    spool_path: Path,
    token: str,
    prefect_api_url: str | None = None,
    registry: CollectorRegistry | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    forward: bool = True,
    max_backoff: float = 30.0,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    undelivered_after: float = DEFAULT_UNDELIVERED_AFTER,
    receiver: str | None = None,
    alertmanager_url: str | None = None,
) -> FastAPI:
    """The bridge as an ASGI app; its lifespan runs the forwarder.

    `receiver`, `alertmanager_url`: when given, a webhook naming another receiver or
    another Alertmanager (`externalURL`) is refused with 403 (misrouted, not ours)."""
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
        description=TITLE,
        lifespan=lifespan,
    )
    app.state.spool, app.state.metrics, app.state.forwarder = spool, metrics, forwarder
    app.state.registry = registry

    app.state.store_failure = None  # the last store's error, until a store succeeds

    def require_token(request: Request) -> None:
        # the Guard checked it before the body was read; this documents it in /docs
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"}, detail=UNAUTHORIZED)

    def require_source(webhook: Webhook) -> None:
        problems = []
        if receiver is not None and webhook.receiver != receiver:
            problems.append(f"receiver {webhook.receiver!r} is not this bridge's {receiver!r}")
        if alertmanager_url is not None and webhook.externalURL.rstrip("/") != alertmanager_url.rstrip("/"):
            problems.append(f"externalURL {webhook.externalURL!r} is not this bridge's {alertmanager_url!r}")
        if problems:
            metrics.rejected.labels("foreign").inc()
            raise HTTPException(
                status_code=403,
                detail="webhook not from the configured Alertmanager: " + "; ".join(problems) + ". Fix: point "
                "only that Alertmanager's receiver at this bridge, or start it with --receiver/--alertmanager-url",
            )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # one shape for every refusal: {"error": ..., "detail": ...}
        return JSONResponse(
            status_code=exc.status_code, headers=exc.headers, content={"error": exc.detail, "detail": exc.detail}
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, problems = problems_of(exc)
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
            403: {"description": "from another receiver or Alertmanager"},
            408: {"description": "body too slow"},
            413: {"description": "body too large"},
            422: {"description": "not an Alertmanager webhook"},
            503: {"description": "could not store; retry"},
            507: {"description": "disk full; retry"},
        },
    )
    async def receive_alerts(webhook: Webhook) -> dict[str, int]:
        """Store each alert durably, then answer; events are forwarded in the background."""
        require_source(webhook)
        received = time.time()
        items, seen = [], set()
        for alert in webhook.alerts:
            key = dedup_key(alert)
            if key in seen:  # the same alert twice in one payload
                continue
            seen.add(key)
            try:
                event = to_event(alert, webhook, received)
            except EventTooLarge as exc:  # the whole group is refused, loudly: Alertmanager counts it failed
                metrics.rejected.labels("too_large").inc()
                raise HTTPException(413, str(exc)) from exc
            items.append((key, json.dumps(event), received))
        try:
            stored, duplicates = await asyncio.to_thread(spool.store, items)
        except sqlite3.Error as exc:
            metrics.rejected.labels("store_failed").inc()
            log.error("could not store alerts in %s: %r", spool.path, exc)
            refusal = _storage_error(exc, spool)
            app.state.store_failure = refusal.detail
            raise refusal from exc
        app.state.store_failure = None
        duplicate_count = len(duplicates) + len(webhook.alerts) - len(items)
        for alert in webhook.alerts:
            metrics.received.labels(alert.status).inc()
        metrics.duplicates.inc(duplicate_count)
        forwarder.wake.set()
        return {"stored": stored, "duplicates": duplicate_count}

    @app.get("/metrics", summary="The bridge's own Prometheus metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", summary="Liveness: the process answers (see /ready for whether it can do its work)")
    async def health() -> dict[str, Any]:
        try:
            depth = await asyncio.to_thread(spool.depth)
        except sqlite3.Error:
            depth = None  # /ready names the cause; liveness only says the process answers
        return {"status": "ok", "spool_depth": depth}

    @app.get(
        "/ready",
        summary="Readiness: the spool can store and the forwarder delivers",
        responses={503: {"description": "not ready; `causes` says why"}},
    )
    async def ready() -> JSONResponse:
        causes = [
            app.state.store_failure,
            await asyncio.to_thread(spool.problem),
            _delivery_problem(forwarder, undelivered_after) if forward else None,
        ]
        causes = [cause for cause in causes if cause]
        try:
            depth = await asyncio.to_thread(spool.depth)
        except sqlite3.Error:
            depth = None
        if causes:
            body = {"status": "not ready", "causes": causes, "spool_depth": depth}
            return JSONResponse(status_code=503, content=body)
        return JSONResponse(content={"status": "ready", "spool_depth": depth})

    return GuardedApp(app, expected, max_body_bytes, body_timeout, metrics)


class GuardedApp(Guard):
    """The FastAPI app wrapped in the body limit; `.app` is the FastAPI app itself."""

    @property
    def state(self) -> Any:
        return self.app.state

    def openapi(self) -> dict[str, Any]:
        return self.app.openapi()
