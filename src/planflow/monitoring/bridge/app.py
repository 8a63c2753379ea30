"""The bridge's ASGI app: the token check, the body limit, the webhook endpoint that
stores before it answers, /metrics and /health; its lifespan runs the forwarder."""

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

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from planflow.monitoring import prefect_api
from planflow.monitoring.bridge.forwarder import Forwarder
from planflow.monitoring.bridge.spool import Spool
from planflow.monitoring.bridge.webhook import Webhook, dedup_key, problems_of, to_event
from planflow.monitoring.metrics import BridgeMetrics

log = logging.getLogger("planflow.bridge")

SPOOL_FILE_NAME = "bridge-spool.sqlite3"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
TITLE = (
    "Alertmanager webhook -> Prefect events: one `planflow.alert.firing` or `planflow.alert.resolved` event per alert."
)


class BridgeError(RuntimeError):
    """The bridge cannot start: no token, or no place for its spool."""


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
        description=TITLE,
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
