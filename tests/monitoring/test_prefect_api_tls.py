"""planflow's own HTTP clients of the Prefect API (the events read, the exporter's health
check) trust the server's certificate as Prefect's client does: the shared context of
`prefect_api.tls_verify`, PREFECT_API_TLS_INSECURE_SKIP_VERIFY and PREFECT_API_SSL_CERT_FILE
honoured, the CA file loaded once per process, not at each client."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from planflow.monitoring import events, exporter, prefect_api

from tests.monitoring.helpers import free_port


def _recording(monkeypatch, module, name: str) -> list[dict]:
    made: list[dict] = []
    real = getattr(httpx, name)

    class Recording(real):
        def __init__(self, **options) -> None:
            made.append(options)
            super().__init__(**options)

    monkeypatch.setattr(module.httpx, name, Recording)
    return made


def test_reading_events_uses_the_shared_tls_context(monkeypatch):
    made = _recording(monkeypatch, events, "Client")
    with pytest.raises(httpx.ConnectError):  # nothing listens there
        events.read_events(f"http://127.0.0.1:{free_port()}/api")
    assert [options["verify"] for options in made] == [prefect_api.tls_verify()]


def test_the_exporters_health_check_uses_the_shared_tls_context(monkeypatch):
    made = _recording(monkeypatch, exporter, "AsyncClient")
    watcher = exporter.Exporter(api_url=f"http://127.0.0.1:{free_port()}/api")
    assert asyncio.run(watcher._healthy()) is False  # nothing listens there
    assert [options["verify"] for options in made] == [prefect_api.tls_verify()]
