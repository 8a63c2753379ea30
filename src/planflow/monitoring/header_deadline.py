"""uvicorn's h11 protocol with a deadline for each request head.

uvicorn bounds the size of a request head (h11_max_incomplete_event_size) and the idle
time after a response (timeout_keep_alive), but not the time a client takes to send its
headers: a client that sends one header byte every few seconds keeps a connection (one
of the alert bridge's few, or a `planflow serve` replica's) open for ever. Here each
connection gets `HEADER_SECONDS` from its start, and again from the end of each
response, to complete its next request head; otherwise it is closed. The same deadline
holds for the rest of a request body the app answered without reading (a GET with a
Content-Length, a refused POST): h11 must read it to the end before the next request, and
uvicorn's keep-alive timer restarts at each byte, so one byte a second after the answer
had kept the connection open for ever, to anyone, without a token.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_SECONDS = 10.0


class HeaderDeadlineProtocol(H11Protocol):
    """H11Protocol that closes a connection whose request head is late (see module)."""

    header_seconds = HEADER_SECONDS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def _arm(self) -> None:
        waiting_after = self.cycle  # a new request head replaces the cycle
        self.loop.call_later(self.header_seconds, self._head_late, waiting_after)

    def _head_late(self, waiting_after: object) -> None:
        # still no new request, and none half-way: a pipelined request that came with the
        # last response (uvicorn starts its cycle before `_arm` runs) may take its time;
        # the body of the request answered (SEND_BODY in the same cycle) may not
        late = self.conn.their_state in (h11.IDLE, h11.SEND_BODY)
        if self.cycle is waiting_after and late and not self.transport.is_closing():
            self.transport.close()


def with_header_deadline(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class with its own deadline (uvicorn takes a class, not an instance)."""
    return type("HeaderDeadline", (HeaderDeadlineProtocol,), {"header_seconds": seconds})
