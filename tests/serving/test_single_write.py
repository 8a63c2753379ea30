"""A replica's answer leaves in one write (single_write.py): the writes of one turn of
the event loop are joined, a close sends what is pending first, and HTTP through a real
uvicorn server on loopback is unchanged (keep-alive, a streamed answer, a closed one)."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from planflow.ops.processes import wait_until
from planflow.ops.server import free_port
from planflow.serving.single_write import OneWriteH11Protocol, _WritesPerTurn


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default


def test_the_writes_of_one_turn_go_out_as_one_and_a_close_sends_them_first():
    async def scenario() -> RecordingTransport:
        inner = RecordingTransport()
        transport = _WritesPerTurn(inner, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"{}")
        assert inner.writes == []  # nothing before the turn ends
        assert transport.get_write_buffer_size() == 40
        await asyncio.sleep(0)
        assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        transport.write(b"next")
        await asyncio.sleep(0)
        transport.write(b"last")
        transport.close()  # sends "last" before closing
        assert inner.writes[1:] == [b"next", b"last"] and inner.closed
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the socket's
        return inner

    asyncio.run(scenario())


SOCKET_WRITES: list[bytes] = []  # what the server handed to its sockets, write by write


class _SocketSpy:
    def __init__(self, transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        SOCKET_WRITES.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class SpiedProtocol(OneWriteH11Protocol):
    def connection_made(self, transport) -> None:
        super().connection_made(_SocketSpy(transport))


@pytest.fixture(scope="module")
def one_write_server():
    app = FastAPI()

    @app.get("/answer/{n}")
    def answer(n: int) -> dict:
        return {"n": n, "pad": "x" * n}

    @app.get("/stream")
    def stream() -> StreamingResponse:
        return StreamingResponse(iter([b"a" * 10, b"b" * 10, b"c" * 10]), media_type="text/plain")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=SpiedProtocol, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, 20), "uvicorn did not start within 20 s"
    yield port
    server.should_exit = True
    thread.join(10)


def test_http_through_the_one_write_protocol_is_unchanged(one_write_server):
    import httpx  # noqa: PLC0415

    with httpx.Client(base_url=f"http://127.0.0.1:{one_write_server}", timeout=5) as client:
        for n in (0, 1, 70_000):  # kept alive across answers, small and larger than a socket buffer
            answer = client.get(f"/answer/{n}")
            assert answer.status_code == 200 and answer.json() == {"n": n, "pad": "x" * n}
        assert client.get("/stream").text == "a" * 10 + "b" * 10 + "c" * 10
        assert client.get("/answer/3", headers={"connection": "close"}).json()["n"] == 3
    # the socket got the answer's head and body in one write
    SOCKET_WRITES.clear()
    with socket.create_connection(("127.0.0.1", one_write_server), timeout=5) as sock:
        sock.sendall(b"GET /answer/5 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"n":5,"pad":"xxxxx"}'), answer
    assert SOCKET_WRITES == [answer], SOCKET_WRITES
