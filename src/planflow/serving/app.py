"""The HTTP service of an online path: /predict, /healthz, /readyz, /metrics.

    POST /predict  one record (a JSON object) or a batch (a list of at most max_batch)
                   -> {"run": ..., "prediction": ...} or {"run": ..., "predictions": [...]}

The body is bounded before it is parsed (413 past `max_body_bytes`), each record is
checked against the request schema (the `request: list[Record]` hint of the path's
first step; 422 naming the record and the field), and the service answers 503 until a
model is loaded, with the command that makes one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, TypeAdapter, ValidationError

from planflow.core.finite import non_finite_at
from planflow.monitoring.serving_metrics import ServingMetrics
from planflow.serving.loader import ServedRuns
from planflow.serving.path import OnlinePath
from planflow.serving.swap import ModelSwapper

logger = logging.getLogger("planflow.serving")

DEFAULT_MAX_BODY_BYTES = 256 * 1024


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    """The body did not all come within BODY_SECONDS (the bytes that came)."""


BODY_SECONDS = 10.0  # the most a request body may take to arrive (408 after)


async def read_bounded(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to be longer than `limit` bytes (by its
    Content-Length, or while it streams in)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge(declared)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(BODY_SECONDS):  # a body that trickles in holds a connection no longer
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(str(size))
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTooSlow(str(size)) from None
    return b"".join(chunks)


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Each problem with where it is (`body`, the record's index in a batch, the field)."""
    return [
        {
            "loc": ["body", *e["loc"]],
            "field": e["loc"][-1] if e["loc"] else None,
            "msg": e["msg"],
            "input": _json_safe(e.get("input")),
        }
        for e in exc.errors(include_url=False)
    ]


def _not_json(name: str) -> Any:
    """Python's JSON reader takes NaN and Infinity; JSON has neither. Refused as malformed
    (a plain `float` field took a NaN, and the model then failed on it: a 500)."""
    raise ValueError(f"{name} is not a JSON value (JSON has no NaN or Infinity); send null or leave the field out")


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent as a float, refused when no float holds it
    (Python reads 1e999 as an infinity, which then reached the model as Infinity would)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of a float's range (at most about 1.8e308); send a finite number")
    return value


def _finite_fields(value: Any) -> Any:
    """A validated record, refused when a field holds a NaN or an infinity: the JSON reader
    refuses those as numbers (_not_json, _finite_float), but a float field takes the
    strings "NaN" and "inf" too, and the model then failed on them (a 500)."""
    found = non_finite_at(value)
    if found is not None:
        where, number = found
        raise ValueError(f"{where or 'the value'} is {number}: send a finite number (or null where the field allows)")
    return value


def _json_safe(value: Any) -> Any:
    """`value` as JSON can carry it: a NaN or an infinity (which Python's JSON reader
    accepts in a request) as its name, "NaN" or "Infinity"; the 422 naming it became a
    500 when the answer could not be written."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def create_app(
    path: OnlinePath,
    poll_seconds: float = 5.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    metrics: ServingMetrics | None = None,
    served: ServedRuns = ServedRuns(),
) -> FastAPI:
    metrics = metrics or ServingMetrics(pipeline=path.pipeline.name)
    swapper = ModelSwapper(path, metrics, served)
    finite = Annotated[path.record_type, AfterValidator(_finite_fields)]
    record = TypeAdapter(finite)
    records = TypeAdapter(list[finite])  # type: ignore[valid-type]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(swapper.poll(poll_seconds))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(title=f"planflow serve {path.pipeline.name}", lifespan=lifespan)
    app.state.swapper = swapper
    app.state.metrics = metrics

    def refuse(status: int, reason: str, detail: Any, close: bool = False) -> JSONResponse:
        """`close`: the body was not read to its end; the connection closes after the
        answer (else a client could go on trickling it in)."""
        metrics.errors[reason].inc()
        return JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"} if close else None)

    one = record.json_schema()
    schema = {"anyOf": [one, {"type": "array", "items": one, "minItems": 1, "maxItems": path.max_batch}]}
    # the body is read by hand (bounded first), so its schema is declared for /docs here
    body_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

    @app.post("/predict", openapi_extra=body_doc)
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        metrics.requests.inc()
        try:
            return await _predict(request)
        except Exception as exc:  # a fault of the server's own: answered and counted, as the alerts expect
            logger.exception("/predict failed")
            return refuse(500, "internal", f"the server failed: {type(exc).__name__}")
        finally:
            metrics.latency.observe(time.perf_counter() - started)

    async def _predict(request: Request) -> Response:
        try:
            body = await read_bounded(request, max_body_bytes)
        except BodyTooSlow as exc:
            return refuse(
                408,
                "too_slow",
                f"request body not received within {BODY_SECONDS:g} s ({exc} bytes came). Fix: send it at once",
                close=True,
            )
        except BodyTooLarge as exc:
            return refuse(
                413,
                "too_large",
                f"request body of {exc} bytes is over the limit of {max_body_bytes} bytes. "
                f"Fix: send at most {path.max_batch} records per request",
                close=True,
            )
        try:
            document = json.loads(body, parse_constant=_not_json, parse_float=_finite_float)
        except ValueError as exc:
            return refuse(400, "bad_request", f"the body is not JSON: {exc}. Fix: send a JSON object or list")
        except RecursionError:
            return refuse(
                400, "bad_request", "the body's JSON is nested too deeply. Fix: send a JSON object or list of records"
            )
        batch = isinstance(document, list)
        if batch and not 1 <= len(document) <= path.max_batch:
            return refuse(
                422, "bad_request", f"a batch holds 1 to {path.max_batch} records; this one holds {len(document)}"
            )
        try:
            items = records.validate_python(document) if batch else [record.validate_python(document)]
        except ValidationError as exc:
            return refuse(422, "bad_request", _errors(exc))
        served = swapper.current  # taken once: a swap during this request does not change it
        if served is None:
            return refuse(503, "not_ready", swapper.problem)
        try:
            # on a thread: a slow model must not hold the event loop, and with it /readyz
            # (a 5 s step made it answer in 4.5 s; HAProxy's check gives up after 2 s)
            answers = await asyncio.to_thread(path.run, items, served.outputs)
        except Exception as exc:  # its message may hold what a client must not read: the log has it
            logger.exception("/predict: the online path failed on run '%s'", served.flow_run_name)
            return refuse(500, "internal", f"the online path failed: {type(exc).__name__} (the service's log has why)")
        run = served.flow_run_name
        content = {"run": run, "predictions": answers} if batch else {"run": run, "prediction": answers[0]}
        return JSONResponse(content)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        served = swapper.current
        if served is None:
            return JSONResponse({"ready": False, "reason": swapper.problem}, status_code=503)
        return JSONResponse({"ready": True, "run": served.describe(), "problem": swapper.problem})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
