"""/metrics over HTTP with bounds: prometheus_client's WSGI app on a bounded server.

prometheus_client's `start_http_server` starts a thread per connection with no socket
timeout: 300 connections that each sent half a request head held 300 threads, for ever
(the exporter's, reachable by anyone who can reach its port). Here each connection gets
`read_seconds` per read, `total_seconds` in all (a head sent a byte at a time within each
read's bound is still cut), and at most `max_connections` are served at once: one more is
closed at once, unanswered, and counted nowhere (Prometheus scrapes one at a time).
"""

from __future__ import annotations

import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

READ_SECONDS = 10.0
TOTAL_SECONDS = 30.0
MAX_CONNECTIONS = 32


class _QuietHandler(WSGIRequestHandler):
    """No line per request in the log; each read and write bounded by the server's `read_seconds`."""

    def setup(self) -> None:
        self.timeout = self.server.read_seconds  # type: ignore[attr-defined]
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class BoundedWSGIServer(ThreadingWSGIServer):
    """A thread per connection, at most `max_connections` of them, each cut after `total_seconds`."""

    read_seconds = READ_SECONDS
    total_seconds = TOTAL_SECONDS
    max_connections = MAX_CONNECTIONS

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: closed, not queued
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        cut = threading.Timer(self.total_seconds, _cut, args=(request,))
        cut.daemon = True
        cut.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            cut.cancel()
            self._slots.release()


def _cut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)  # its thread's read or write ends at once
    except OSError:
        pass


def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    read_seconds: float = READ_SECONDS,
    total_seconds: float = TOTAL_SECONDS,
    max_connections: int = MAX_CONNECTIONS,
) -> BoundedWSGIServer:
    """Serve `registry` on host:port from a daemon thread; the server (`shutdown()` ends it)."""
    bounds = {"read_seconds": read_seconds, "total_seconds": total_seconds, "max_connections": max_connections}
    server_class = type("MetricsServer", (BoundedWSGIServer,), bounds)
    if ":" in host:
        server_class.address_family = socket.AF_INET6
    server = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="planflow-metrics-http", daemon=True).start()
    return server
