"""The exporter's /metrics server: bounded per read, in all, and in connections at once
(prometheus_client's own held a thread per half-sent request head, for ever)."""

from __future__ import annotations

import socket
import time

import httpx
from prometheus_client import CollectorRegistry, Gauge

from planflow.monitoring.metrics_http import serve_metrics

from tests.conftest import free_port


def _closed_within(sock: socket.socket, seconds: float, trickle: bool = False) -> float | None:
    """Seconds until the server closed `sock` (None: still open after `seconds`); with
    `trickle`, a header byte is sent every 0.3 s meanwhile."""
    started = time.monotonic()
    sock.settimeout(0.3)
    while time.monotonic() - started < seconds:
        try:
            if trickle:
                sock.sendall(b"X")
            if sock.recv(1024) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    return None


def test_metrics_are_served_and_stalled_or_extra_connections_are_cut():
    registry = CollectorRegistry()
    Gauge("planflow_test_gauge", "a gauge of this test", registry=registry).set(3)
    port = free_port()
    server = serve_metrics(registry, "127.0.0.1", port, read_seconds=1.0, total_seconds=2.0, max_connections=3)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        assert "planflow_test_gauge 3.0" in httpx.get(url, timeout=5).text
        stalled = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        for sock in stalled:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        time.sleep(0.2)  # their threads have taken the three places
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            took = _closed_within(extra, 1.0)
            assert took is not None, "a connection past max_connections was kept waiting"
        took = [_closed_within(sock, 5.0, trickle=(i == 0)) for i, sock in enumerate(stalled)]
        # one read stalls past read_seconds; the trickled head is cut at total_seconds
        assert all(t is not None for t in took), took
        for sock in stalled:
            sock.close()
        assert "planflow_test_gauge 3.0" in httpx.get(url, timeout=5).text  # their places are free again
    finally:
        server.shutdown()
        server.server_close()
