"""The run's server watchdog makes its HTTP client for its first look, not at the run's
start, with the TLS context Prefect's own client would use, built once per process.

Why: an httpx client built without `verify` loads the CA file, about 40 ms of CPU, and
every run's watchdog built one at its start, beside the run's first steps (py-spy on the
overhead benchmark's runs of 40 trivial components: 42 ms of CPU per run)."""

from __future__ import annotations

import ssl
import threading

import httpx
from prefect.settings import PREFECT_API_TLS_INSECURE_SKIP_VERIFY, temporary_settings

from planflow.monitoring import prefect_api
from planflow.runtime import watchdog
from planflow.runtime.watchdog import ServerWatchdog, lost_message

from tests.monitoring.helpers import free_port


class _CountingClient(httpx.Client):
    made: list[dict] = []

    def __init__(self, **options) -> None:
        type(self).made.append(options)
        super().__init__(**options)


def _counting(monkeypatch) -> list[dict]:
    made: list[dict] = []
    monkeypatch.setattr(_CountingClient, "made", made)
    monkeypatch.setattr(watchdog.httpx, "Client", _CountingClient)
    return made


def test_a_watchdog_stopped_before_its_first_look_makes_no_client(monkeypatch):
    made = _counting(monkeypatch)
    lost: list[str] = []
    dog = ServerWatchdog(f"http://127.0.0.1:{free_port()}/api", bound=5.0, on_lost=lost.append, interval=0.5).start()
    dog.stop()  # a run shorter than the interval
    dog._thread.join(5)
    assert not dog._thread.is_alive()
    assert made == [] and lost == []


def test_a_watchdog_looks_after_one_interval_and_names_a_server_that_stopped_answering(monkeypatch):
    made = _counting(monkeypatch)
    api = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    said = threading.Event()
    lost: list[str] = []

    def on_lost(cause: str) -> None:
        lost.append(cause)
        said.set()

    dog = ServerWatchdog(api, bound=0.3, on_lost=on_lost, interval=0.05).start()
    try:
        assert said.wait(10), "the watchdog never reported the lost server"
    finally:
        dog.stop()
    assert lost == [lost_message(api, 0.3)]
    assert len(made) == 1 and made[0]["verify"] is prefect_api.tls_verify()


def test_the_tls_context_follows_prefects_settings_and_is_built_once():
    default = prefect_api.tls_verify()
    assert default is prefect_api.tls_verify()  # once per process and setting
    assert default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname
    with temporary_settings(updates={PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
        insecure = prefect_api.tls_verify()
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname


def test_a_watchdog_keeps_the_tls_settings_of_the_run_that_made_it(monkeypatch):
    """Its thread does not see the settings context of the run that started it: the
    settings are read when it is made, the context built from them at its first look."""
    made = _counting(monkeypatch)
    said = threading.Event()
    with temporary_settings(updates={PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
        api = f"http://127.0.0.1:{free_port()}/api"
        dog = ServerWatchdog(api, bound=0.2, on_lost=lambda _: said.set(), interval=0.05)
    dog.start()
    try:
        assert said.wait(10), "the watchdog never reported the lost server"
    finally:
        dog.stop()
    assert made[0]["verify"].verify_mode == ssl.CERT_NONE
