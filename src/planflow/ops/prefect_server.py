"""The Prefect server as planflow starts it: Prefect's own `prefect server start`, with
one addition, `RetryBusy`: a request that met a busy database (Prefect answers 503,
"Service Unavailable", for errors a client may retry, chiefly SQLite's "database is
locked") is tried again inside the server a few milliseconds later, before any 503
goes out.

Why: SQLite has one writer at a time. A write transaction that had read first and then
meets another writer gets SQLITE_BUSY at once, not after the busy timeout, and Prefect's
client then sleeps 2 s, 4 s, 8 s... before it tries again. A planflow run writes a
handful of times as it starts (the planning slot, its calendar entry, its pool's shared
slots) while the server is still storing the previous runs' task-run events, and these
sleeps were most of its start-up (bench/bench_overhead.py: 2-6 s of a 4-10 s run of 40
trivial components) and of the fleet's run-creation latency. Tried again here after
20-500 ms the write nearly always goes through. The transaction that failed was rolled
back, so trying it again is what the client would have done, only sooner; after
`ATTEMPTS` the 503 goes out as before and the client's own retries take over.

Run as `python -m planflow.ops.prefect_server server start --host H --port P` (any
`prefect` command line works; only `server start` is changed).
"""

from __future__ import annotations

import asyncio
import functools
import random
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

ATTEMPTS = 12  # tries after the first: waits of about 20, 40, ..., 320 ms, then 500 ms (~4.5 s in all)
FIRST_WAIT_S = 0.02
MAX_WAIT_S = 0.5
MAX_BODY_BYTES = 32 * 2**20  # a larger request is passed through as it comes, not retried
# Not tried again here: taking concurrency slots is two steps on the server (the slots,
# then their lease), and a 503 after the first would take them twice; seen as a step
# waiting 60 s (the lost lease's time) for slots it had itself. The client's own retry
# stays, as in Prefect.
NOT_RETRIED = ("/concurrency_limits/increment",)


class RetryBusy:
    """ASGI middleware: an HTTP request answered 503 is run again, with its body replayed,
    up to `attempts` times with growing, jittered waits; the last answer goes out. Any
    other answer is passed through as the app sends it (nothing else is buffered)."""

    def __init__(self, app: App, attempts: int = ATTEMPTS, first_wait_s: float = FIRST_WAIT_S) -> None:
        self.app = app
        self.attempts = attempts
        self.first_wait_s = first_wait_s

    def __getattr__(self, name: str) -> Any:  # the wrapped app's state, routes, ... stay reachable
        return getattr(self.app, name)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(part in scope.get("path", "") for part in NOT_RETRIED):
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive)
        if not complete:  # too large to hold, or the client left: no second try
            await self.app(scope, _replay(body, receive, more=True), send)
            return
        wait = self.first_wait_s
        for attempt in range(self.attempts + 1):
            last = attempt == self.attempts
            held: list[Message] = []
            try:  # a copy of the scope each time: routing writes into it (Starlette's Mount)
                await self.app(dict(scope), _replay(body, receive), _holding_503(send, held, last))
            except Exception:
                # Starlette's error middleware raises again after its handler's answer (the
                # 503 held here): that answer is what counts, the error was logged
                if not held:
                    raise
            if not held:
                return
            await asyncio.sleep(wait * random.uniform(0.5, 1.5))
            wait = min(MAX_WAIT_S, wait * 2)


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request's whole body, and whether it was read whole (not over the size cap)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > MAX_BODY_BYTES:
            return b"".join(chunks), False


def _replay(body: bytes, receive: Receive, more: bool = False) -> Receive:
    """A `receive` that gives `body` first (`more`: the rest still comes from the
    client), then whatever the client sends next (its disconnect)."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replayed


def _holding_503(send: Send, held: list[Message], last: bool) -> Send:
    """A `send` that keeps a 503 answer back in `held` (unless `last`) and passes
    every other answer straight through."""
    state = {"passing": False}

    async def holding(message: Message) -> None:
        if state["passing"]:
            await send(message)
        elif message["type"] == "http.response.start" and message["status"] == 503 and not last:
            held.append(message)
        elif held:
            held.append(message)  # the 503's body: dropped with it
        else:
            state["passing"] = True
            await send(message)

    return holding


def main() -> Any:
    """Prefect's command line (it reads `sys.argv`), its server app wrapped in `RetryBusy`."""
    import prefect.server.api.server as api  # noqa: PLC0415 (the whole server: only when it starts)

    make_app = api.create_app

    @functools.wraps(make_app)
    def create_app(*args: Any, **kwargs: Any) -> Any:
        return RetryBusy(make_app(*args, **kwargs))

    api.create_app = create_app
    from prefect.cli import app  # noqa: PLC0415 (after the patch above, which it must see)

    return app()


if __name__ == "__main__":
    sys.exit(main())
