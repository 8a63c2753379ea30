"""RetryBusy (ops/prefect_server.py): a request the server answers 503 (a busy SQLite
database) is run again inside the server with its body replayed; other answers pass."""

from __future__ import annotations

import asyncio

import pytest

from planflow.ops import prefect_server
from planflow.ops.prefect_server import RetryBusy


class App:
    """An ASGI app that answers 503 `busy` times, then 200 with the body it read; like
    Starlette's error middleware, it raises after a 503 when `raise_after_503`."""

    def __init__(self, busy: int, raise_after_503: bool = False) -> None:
        self.busy, self.raise_after_503 = busy, raise_after_503
        self.bodies: list[bytes] = []
        self.paths: list[str] = []

    async def __call__(self, scope, receive, send):
        scope["root_path"] = scope.get("root_path", "") + "/api"  # what a Mount does to the scope
        self.paths.append(scope["root_path"])
        message = await receive()
        self.bodies.append(message["body"])
        if len(self.bodies) <= self.busy:
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b'{"exception_message":"Service Unavailable"}'})
            if self.raise_after_503:
                raise RuntimeError("database is locked")
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok:" + message["body"]})


def call(app, body: bytes = b'{"slots": 1}', scope_type: str = "http"):
    sent = []
    chunks = [body[:4], body[4:]]

    async def receive():
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    asyncio.run(RetryBusy(app, first_wait_s=0.001)(dict(type=scope_type, root_path=""), receive, send))
    return sent


@pytest.mark.parametrize("raise_after_503", [False, True])
def test_a_busy_answer_is_tried_again_with_the_same_body_until_it_goes_through(raise_after_503):
    app = App(busy=3, raise_after_503=raise_after_503)
    sent = call(app)
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [200]
    assert sent[-1]["body"] == b'ok:{"slots": 1}'
    assert app.bodies == [b'{"slots": 1}'] * 4  # the body, read in two chunks once, replayed whole
    assert app.paths == ["/api"] * 4  # each try routed on a fresh copy of the scope


def test_after_the_last_attempt_the_503_goes_out_as_it_came():
    app = App(busy=10**6)
    sent = call(app)
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [503]
    assert b"Service Unavailable" in sent[-1]["body"]
    assert len(app.bodies) == prefect_server.ATTEMPTS + 1


def test_an_error_without_a_503_is_not_swallowed_and_other_answers_pass_at_once():
    class Broken(App):
        async def __call__(self, scope, receive, send):
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        call(Broken(busy=0))
    app = App(busy=0)
    assert call(app)[0]["status"] == 200 and len(app.bodies) == 1
