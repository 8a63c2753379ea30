"""A run whose Prefect server stops fails within a bound, with the cause, and is marked
Crashed when the server is back.

Why. Prefect's client retries a failed call (PREFECT_CLIENT_MAX_RETRIES, exponential
backoff, PREFECT_API_REQUEST_TIMEOUT each), and the flow engine, on the error, tries to
report the crash through the same dead server: killing the server in the middle of
`planflow run` hung the command for minutes, and the run stayed Running on the server
long after it came back.

How. While a planflow flow runs, a daemon thread (`ServerWatchdog`) asks the server's
/api/health every `interval` seconds. When it has not answered for `bound` seconds
(PLANFLOW_SERVER_LOST_SECONDS, 30 by default) the watchdog:

1. starts a small detached process (`python -m planflow.runtime.watchdog`) that waits
   for the server to answer again (at most `CRASH_WAIT_SECONDS`) and then sets the flow
   run to Crashed with the cause, unless it reached a final state meanwhile. When the
   server is this project's planflow server, the run is also written down in its state
   folder (`crash-pending/`), and a server stopped on purpose (`planflow server down`:
   its server.json gone) ends the wait at once: `planflow server up` marks the runs
   written down when it starts the server again (the process waited an hour before);
2. writes the cause to stderr and ends this process with exit code `EXIT_SERVER_LOST`:
   nothing in it can make progress, and a clean shutdown would call the dead server
   again (and hang again). A worker sees the non-zero exit as a crash too.

The watchdog stops when the flow run reaches a final state (the flow's state hooks,
see flow.py) or when its process ends.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Crashed

from planflow.monitoring import prefect_api
from planflow.settings import StatePaths, make_private_dir, settings, write_private

log = logging.getLogger("planflow.watchdog")

EXIT_SERVER_LOST = 75  # EX_TEMPFAIL: the server, not the pipeline, failed
CRASH_WAIT_SECONDS = 3600.0
PENDING_DIR = "crash-pending"  # in a planflow server's state folder: runs lost with it, to mark Crashed
_running: dict[str, ServerWatchdog] = {}
_lock = threading.Lock()


def lost_message(api_url: str, bound: float) -> str:
    return f"Prefect server at {api_url} unreachable for {bound:g} s"


class ServerWatchdog:
    """Calls `on_lost(cause)` once when `api_url`/health has failed for `bound` seconds."""

    def __init__(
        self,
        api_url: str,
        bound: float,
        on_lost: Callable[[str], None],
        interval: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.api_url, self.bound, self.on_lost = api_url.rstrip("/"), bound, on_lost
        # six looks within the bound (30 s: every 5 s); every 2 s, eight waiting runs sent a
        # fleet burst's largest share of requests after the slots' (215 of 3,800)
        self.interval = interval if interval is not None else max(0.2, min(5.0, bound / 6))
        self.headers = headers or {}
        self.tls = prefect_api.tls_settings()  # the caller's settings; the context is built at the first look
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="planflow-server-watchdog", daemon=True)

    def start(self) -> ServerWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _healthy(self, http: httpx.Client) -> bool:
        try:
            return http.get(f"{self.api_url}/health").status_code == 200
        except httpx.HTTPError:
            return False

    def _watch(self) -> None:
        timeout = max(0.5, min(5.0, self.bound / 3))
        last_answer = time.monotonic()
        # the client is made for the first look, one interval in, not at the run's start,
        # where the TLS context it builds (when not shared: tls_verify) ran beside the
        # run's first steps; a run shorter than the interval makes none
        if self._stop.wait(self.interval):
            return
        with httpx.Client(timeout=timeout, headers=self.headers, verify=prefect_api.tls_verify(self.tls)) as http:
            while True:
                if self._healthy(http):
                    last_answer = time.monotonic()
                elif time.monotonic() - last_answer >= self.bound and not self._stop.is_set():
                    self.on_lost(lost_message(self.api_url, self.bound))
                    return
                if self._stop.wait(self.interval):
                    return


def own_server_home(api_url: str) -> Path | None:
    """The state folder of this project's planflow server when `api_url` is that server's
    (its server.json says so), else None (a server planflow did not start)."""
    try:
        paths = StatePaths.discover()
    except (OSError, RuntimeError, ValueError):
        return None
    return paths.home if paths.serves(api_url) else None


def crash_when_back(flow_run_id: str, api_url: str, home: Path | None = None) -> Callable[[str], None]:
    """The default `on_lost` of a flow run: leave a process that marks it Crashed when
    the server is back, say why on stderr and end this process (see the module doc).
    `home`: the state folder of the planflow server at `api_url`, if it is one."""

    def on_lost(cause: str) -> None:
        message = f"planflow: flow run {flow_run_id} failed: {cause}; it is marked Crashed when the server is back"
        where = ["--home", str(home)] if home is not None else []
        try:
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "planflow.runtime.watchdog",
                    flow_run_id,
                    "--api-url",
                    api_url,
                    "--cause",
                    cause,
                    *where,
                ],
                env={**os.environ, "PREFECT_API_URL": api_url},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            message += f" (could not start the process that would: {exc}; the crash automation will)"
        log.error(message)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.write(2, (message + "\n").encode())
        isolation = sys.modules.get("planflow.runtime.isolation")  # loaded by a run; not imported for this
        if isolation is not None:
            isolation.kill_isolated_children()  # the forkserver's children outlive this process otherwise
        os._exit(EXIT_SERVER_LOST)

    return on_lost


def watch_run(flow_run_id: str | None, api_url: str | None = None) -> ServerWatchdog | None:
    """Start the watchdog of one flow run (none outside a flow run or without a server
    url; one per flow run). Stopped by `unwatch_run`."""
    if not flow_run_id:
        return None
    try:
        url = prefect_api.api_url(api_url)
    except RuntimeError:
        return None
    with _lock:
        if flow_run_id in _running:
            return _running[flow_run_id]
        bound = settings().server_lost_seconds
        on_lost = crash_when_back(flow_run_id, url, own_server_home(url))  # read now: `server down` removes it
        watchdog = ServerWatchdog(url, bound, on_lost, headers=prefect_api.auth_headers())
        _running[flow_run_id] = watchdog
    return watchdog.start()


def unwatch_run(flow_run_id: str | None) -> None:
    with _lock:
        watchdog = _running.pop(str(flow_run_id), None) if flow_run_id else None
    if watchdog:
        watchdog.stop()


def unwatch_later(flow_run_id: str | None, grace: float | None = None) -> None:
    """Stop the run's watchdog `grace` seconds from now (default: twice the bound), time
    enough for the flow engine to report the final state (and to hang doing it)."""
    if not flow_run_id or flow_run_id not in _running:
        return
    timer = threading.Timer(grace if grace is not None else 2 * _running[flow_run_id].bound, unwatch_run, [flow_run_id])
    timer.daemon = True
    timer.start()


def mark_crashed(
    flow_run_id: str,
    cause: str,
    wait: float = CRASH_WAIT_SECONDS,
    interval: float = 2.0,
    home: Path | None = None,
) -> str:
    """Wait (at most `wait` s) for the server in PREFECT_API_URL, then set the flow run
    Crashed unless it is final already. With `home` (the state folder of the planflow
    server it is), the run is written down there first, and a server stopped with
    `planflow server down` ends the wait: `planflow server up` marks it. Returns what was done."""
    deadline = time.monotonic() + wait
    url = prefect_api.api_url()
    pending = _write_pending(home, flow_run_id, cause, url) if home is not None else None
    with httpx.Client(timeout=5, headers=prefect_api.auth_headers(), verify=prefect_api.tls_verify()) as http:
        while True:
            try:
                if http.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if home is not None and not StatePaths(home).serves(url):
                return (
                    f"the server at {url} was stopped (planflow server down): flow run {flow_run_id} is marked "
                    f"Crashed when planflow server up starts it again ({pending})"
                )
            if time.monotonic() > deadline:
                return f"the server at {url} did not come back within {wait:g} s; flow run {flow_run_id} left as it is"
            time.sleep(interval)
    with get_client(sync_client=True) as client:
        done = _set_crashed(client, flow_run_id, cause)
    if pending is not None:
        pending.unlink(missing_ok=True)
    return done


def _set_crashed(client: SyncPrefectClient, flow_run_id: str, cause: str) -> str:
    run = client.read_flow_run(flow_run_id)
    if run.state is not None and run.state.is_final():
        return f"flow run {flow_run_id} is {run.state.name} already"
    client.set_flow_run_state(flow_run_id, Crashed(message=f"planflow: {cause}"), force=True)
    return f"flow run {flow_run_id} marked Crashed: {cause}"


def _write_pending(home: Path, flow_run_id: str, cause: str, url: str) -> Path:
    folder = make_private_dir(home / PENDING_DIR)
    file = folder / f"{flow_run_id}.json"
    note = {"flow_run_id": flow_run_id, "cause": cause, "api_url": url, "db": StatePaths(home).last_database()}
    write_private(file, json.dumps(note))
    return file


def crash_pending(home: Path, api_url: str) -> list[str]:
    """Mark Crashed the flow runs that were lost with the planflow server of `home`
    (written down there, see mark_crashed), now that it answers at `api_url` (on whatever
    port: the notes are the project's); notes of the project's other database are kept for
    it. What was done, each. Never raises: the server runs already (a note that could not
    be acted on, e.g. refused for credentials, is kept for the next start)."""
    done = []
    database = StatePaths(home).last_database()
    for file in sorted((home / PENDING_DIR).glob("*.json")):
        try:
            record = json.loads(file.read_text())
            flow_run_id, cause = record["flow_run_id"], record["cause"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            done.append(f"{file} could not be read ({exc}); removed")
            file.unlink(missing_ok=True)
            continue
        if record.get("db") and database and record["db"] != database:
            continue  # a run of the project's other database: marked when the server runs on it again
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
                done.append(_set_crashed(client, flow_run_id, cause))
        except ObjectNotFound:
            done.append(f"flow run {flow_run_id} no longer exists")
        except Exception as exc:  # noqa: BLE001 - kept for the next start, and said
            done.append(
                f"flow run {flow_run_id} could not be marked Crashed ({type(exc).__name__}: {exc}); kept in {file}"
            )
            continue
        file.unlink(missing_ok=True)
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Mark a flow run Crashed once its Prefect server is back.")
    parser.add_argument("flow_run_id")
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--cause", required=True)
    parser.add_argument("--wait", type=float, default=CRASH_WAIT_SECONDS)
    parser.add_argument("--home", type=Path, help="the state folder of the planflow server it is")
    args = parser.parse_args(argv)
    print(mark_crashed(args.flow_run_id, args.cause, args.wait, home=args.home))


if __name__ == "__main__":
    main()
