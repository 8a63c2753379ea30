"""A replica's answer leaves in one write, so that a replica killed mid-answer sends
all of it or nothing.

uvicorn writes an answer's head and its body in two writes. A replica killed between
them has sent HAProxy a head without its body: HAProxy has begun the answer and cannot
retry it elsewhere, so it closes the client's connection unanswered. Nothing sent at all
is an empty answer, which HAProxy retries on the other replica. Measured with
/predict under load behind HAProxy, 60 kills each: two writes lost a request on 9 kills,
one write on none.

`OneWriteH11Protocol` (uvicorn's `http=` option) gathers the writes of one turn of the
event loop and hands them to the socket together at the end of that turn (or at once
when the connection closes).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from planflow.monitoring.header_deadline import HeaderDeadlineProtocol


class _WritesPerTurn:
    """A transport whose writes within one turn of the loop go out as one write."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, ...
        return getattr(self._transport, name)


class OneWriteH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, its answers each written to the socket at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(_WritesPerTurn(transport, self.loop))  # type: ignore[arg-type]


class ServingProtocol(OneWriteH11Protocol, HeaderDeadlineProtocol):
    """A replica's protocol: its answers in one write each, and a client that does not
    complete a request head within HEADER_SECONDS disconnected (a partial head held a
    connection open for as long as the client liked)."""
