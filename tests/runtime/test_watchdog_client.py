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


def test_crash_notes_that_cannot_be_acted_on_are_kept_and_said_and_another_databases_are_left(tmp_path):
    """`server up` marks the runs lost at `server down` once the server answers: a note it
    cannot act on (credentials refused, the server gone again) escaped as a traceback from
    `up` (the server running already); and a note is the project's, whatever the port."""
    import json

    from planflow.settings import StatePaths

    paths = StatePaths(tmp_path / "home")
    paths.home.mkdir()
    paths.database_file.write_text("sqlite")
    notes = paths.home / watchdog.PENDING_DIR
    notes.mkdir()
    mine = notes / "11111111-1111-1111-1111-111111111111.json"
    other = notes / "22222222-2222-2222-2222-222222222222.json"
    mine.write_text(json.dumps({"flow_run_id": mine.stem, "cause": "lost", "api_url": "http://127.0.0.1:4300/api"}))
    other.write_text(json.dumps({"flow_run_id": other.stem, "cause": "lost", "db": "postgres", "api_url": "x"}))
    nobody = f"http://127.0.0.1:{free_port()}/api"  # another port than the note's; nothing answers
    done = watchdog.crash_pending(paths.home, nobody)
    assert len(done) == 1 and f"flow run {mine.stem} could not be marked Crashed" in done[0], done
    assert mine.exists() and other.exists()  # kept: the first for the next start, the second for postgres


def test_the_state_folder_keeps_its_traversal_for_a_postgres_cluster(tmp_path):
    from planflow.ops.server import chosen_database
    from planflow.settings import StatePaths

    paths = StatePaths(tmp_path / "home")
    paths.ensure()
    assert chosen_database(paths) == "sqlite"
    (paths.home / "postgres" / "data").mkdir(parents=True)
    (paths.home / "postgres" / "data" / "PG_VERSION").write_text("15")
    assert chosen_database(paths) == "postgres"  # a project on PostgreSQL from before the record
    paths.home.chmod(0o711)
    paths.ensure()  # `server up` made it 0700 for a moment: a checkpoint then failed
    assert (paths.home.stat().st_mode & 0o777) == 0o711
