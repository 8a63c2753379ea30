"""The embedded Prefect server: start, stop and inspect it.

`up` is idempotent: a healthy server recorded in the state folder is reused, a
stale pid file (its process gone) is cleaned, and a port held by something else
is reported with the fix. The server runs in its own process group so that `down`
stops it together with the children it spawns.

Every server `up` starts is also written to a per-user record,
`$XDG_STATE_HOME/planflow/servers.json` (port -> project, pid, start time), so that a
port held by the planflow server of another project is reported as such, naming
that project, and not as a stranger's.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psutil
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from planflow.ops.postgres import Cluster, PostgresError, make_state_private
from planflow.ops.processes import command_line, free_port, port_in_use, start_ticks  # noqa: F401 (free_port: re-exported, the tests and benchmarks take it from here)
from planflow.settings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    StatePaths,
    make_private_dir,
    private_files,
    server_url,
    settings,
    write_private,
)


class StackError(RuntimeError):
    """The embedded server could not be started, found or stopped."""


@dataclass(frozen=True)
class ServerStatus:
    state: str  # "running" | "stopped" | "stale" | "unhealthy"
    url: str | None
    pid: int | None
    detail: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"


def _server_process(pid: int, record: Mapping[str, Any] | None = None) -> psutil.Process | None:
    """The live Prefect process `pid` (the one `record` names, when given: its start in
    ticks since boot, which a change of the wall clock does not move, or for a record of
    an older planflow its start time); None when it is gone, a zombie, or a recycled pid
    that now belongs to another program."""
    record = record or {}
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if record.get("started_ticks") is not None:
            if start_ticks(pid) != record["started_ticks"]:
                return None
        elif record.get("started") is not None and abs(process.create_time() - record["started"]) > 1.0:
            return None
        if not any("prefect" in part for part in command_line(process)):
            return None
    except psutil.AccessDenied:
        return psutil.Process(pid)  # someone else's process: it exists, we cannot tell more
    except psutil.Error:
        return None
    return process


def _pid_alive(pid: int, record: Mapping[str, Any] | None = None) -> bool:
    return _server_process(pid, record) is not None


def _read_pid(paths: StatePaths) -> int | None:
    try:
        return int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True when the Prefect API at `url` (ending in /api) answers its health check."""
    return _health(url, timeout) is None


SLOW = "no answer to its health check"
START_IT = "start it, or unset PREFECT_API_URL to use the embedded server (`planflow server up`)"


def health_problem(url: str, within: float = 15.0, timeout: float = 2.0) -> tuple[str, str] | None:
    """None when the Prefect API at `url` answers its health check, else what is wrong and
    its fix. Patient with a busy server: a check that times out or is answered 5xx or 429
    is asked again for up to `within` s (a server on a loaded machine can take more than
    2 s); an answer that will not change is final at once: nothing listens there, its TLS
    certificate is not trusted, `url` is not an http(s) URL, or something else answered."""
    retrying = Retrying(
        stop=stop_after_delay(within),
        wait=wait_fixed(0.5),
        retry=retry_if_result(lambda problem: problem is not None and problem[0] == SLOW),
        retry_error_callback=lambda state: state.outcome.result(),
    )
    problem = retrying(_health, url, timeout)
    if problem is not None and problem[0] == SLOW:
        return f"{SLOW} within {within:g} s", problem[1]
    return problem


def _health(url: str, timeout: float) -> tuple[str, str] | None:
    """One health check: None (healthy) or (what is wrong, its fix)."""
    verify: Any = True
    if url.startswith("https:"):  # as Prefect's client would: its CA file, or no check when told so
        from planflow.monitoring.prefect_api import tls_verify  # noqa: PLC0415 (imports Prefect)

        verify = tls_verify()
    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout, verify=verify)
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        return f"not a URL to ask ({exc})", "give PREFECT_API_URL as http(s)://HOST:PORT/api"
    except httpx.ConnectError as exc:
        if isinstance(exc.__cause__, ssl.SSLError) or "CERTIFICATE" in str(exc).upper():
            return (
                f"its TLS certificate is not trusted ({exc})",
                "set PREFECT_API_SSL_CERT_FILE to the CA file that signed it (or PREFECT_API_TLS_INSECURE_SKIP_VERIFY"
                "=true, as Prefect's client reads them)",
            )
        return f"nothing answers there ({exc})", START_IT
    except httpx.HTTPError:
        return SLOW, START_IT
    if response.status_code == 200:
        return None
    if response.status_code >= 500 or response.status_code == 429:
        return SLOW, START_IT
    return (
        f"{url.rstrip('/')}/health answered {response.status_code}, not a Prefect API's health check",
        "give PREFECT_API_URL as the Prefect API's address, ending in /api",
    )


def auth_refused(url: str, timeout: float = 2.0) -> bool:
    """True when the Prefect API at `url` refuses this process's credentials (401: its API
    auth is on, and PREFECT_API_AUTH_STRING is unset or wrong). Asked as Prefect's own
    client asks first (its version check), with the Basic credentials it would send."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY  # noqa: PLC0415 (heavy)

    auth_string, api_key = PREFECT_API_AUTH_STRING.value(), PREFECT_API_KEY.value()
    headers = {}
    if auth_string:
        headers["Authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
    elif api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        response = httpx.get(f"{url.rstrip('/')}/admin/version", headers=headers, timeout=timeout)
    except httpx.HTTPError:
        return False  # the commands meet and name what is wrong
    return response.status_code == 401


def _clean(paths: StatePaths) -> None:
    for file in (paths.pid_file, paths.server_file):
        file.unlink(missing_ok=True)


def status(paths: StatePaths | None = None) -> ServerStatus:
    paths = paths or StatePaths.discover()
    pid = _read_pid(paths)
    record = paths.recorded()
    url = record.get("url")
    if pid is None:
        return ServerStatus("stopped", None, None, "not running (`planflow server up` starts it)")
    if not _pid_alive(pid, record):
        return ServerStatus("stale", url, pid, f"pid {pid} in {paths.pid_file} is not running")
    if url and healthy(url):
        return ServerStatus("running", url, pid)
    return ServerStatus("unhealthy", url, pid, f"process {pid} runs but {url}/health does not answer")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def prefect_command() -> list[str]:
    """The `prefect` command of this interpreter's environment."""
    script = Path(sys.executable).with_name("prefect")
    if script.exists():
        return [str(script)]
    found = shutil.which("prefect")
    if found:
        return [found]
    return [sys.executable, "-m", "prefect"]


DATABASES = ("sqlite", "postgres")
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
RELATED_RESOURCE_CACHE_TTL = "PT0S"  # none (ISO 8601): a run's tags read at each of its state events


def new_database_note(paths: StatePaths, db: str) -> str | None:
    """What to say when `up` is about to start the server on `db` for the first time while
    the project's other database holds its runs: the new one starts empty (Prefect moves
    nothing between them), which `up` used to leave unsaid."""
    sqlite_held = (paths.prefect_home / "prefect.db").exists()
    postgres_held = Cluster(paths).initialized
    if db == "postgres" and sqlite_held and not postgres_held:
        new, old = "PostgreSQL", "sqlite"
    elif db == "sqlite" and postgres_held and not sqlite_held:
        new, old = "SQLite", "postgres"
    else:
        return None
    return (
        f"a new, empty {new} database: this project's runs, deployments, blocks, work pools and automations "
        f"stay in its {old} database (Prefect moves nothing between them; `planflow server up --db {old}` "
        "finds them again). Fix, to use this one: create them here again, e.g. `planflow pools set NAME ...` "
        "(or `planflow blocks apply` from a blocks/ folder), `planflow workpools apply`, `prefect deploy --all`, "
        "and `planflow stack up` (the automations and their remediation worker)"
    )


def server_env(paths: StatePaths, host: str, port: int, database_url: str | None = None) -> dict[str, str]:
    """The server's environment; `database_url` (PostgreSQL) replaces the default SQLite."""
    env = dict(os.environ)
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    env.update(
        PREFECT_HOME=str(paths.prefect_home),
        # the leases of concurrency slots kept on disk (PREFECT_HOME/concurrency_leases),
        # not in the server's memory: a restart lost them while the slots they held stayed
        # taken in the database, and nothing gave those back (a pool "full" for good)
        PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=LEASE_STORAGE,
        # a flow run's state events name its tags as they are at that state, not as they
        # were at its first event: the server keeps a run's related resources (tags among
        # them) for 5 minutes by default, so a deployment's run without the `planflow` tag,
        # which the run adds at its start, failed without it in its event, and the retry
        # and crash automations, which match that tag, never saw it
        PREFECT_SERVER_EVENTS_RELATED_RESOURCE_CACHE_TTL=RELATED_RESOURCE_CACHE_TTL,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_API_URL=server_url(host, port),
        PREFECT_LOCAL_STORAGE_PATH=str(paths.results),
    )
    return env


# -- the per-user record of planflow's servers ---------------------------------------------
def servers_file() -> Path:
    """`$XDG_STATE_HOME/planflow/servers.json` (default under ~/.local/state)."""
    return settings().user_state_dir() / "servers.json"


@contextmanager
def _servers_record() -> Iterator[dict[str, Any]]:
    """The record, read and written back under an exclusive lock (0600)."""
    file = servers_file()
    make_private_dir(file.parent)
    descriptor = os.open(file, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            record = json.loads(handle.read() or "{}")
        except ValueError:
            record = {}
        servers = record.get("servers") if isinstance(record.get("servers"), dict) else {}
        yield servers
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"servers": servers}, indent=2, sort_keys=True))
        os.fchmod(descriptor, 0o600)


def _remember(paths: StatePaths, host: str, port: int, pid: int, identity: Mapping[str, Any]) -> None:
    entry = {"project": str(paths.project), "home": str(paths.home), "host": host, "pid": pid, **identity}
    with _servers_record() as servers:
        servers[str(port)] = entry


def _forget(paths: StatePaths) -> None:
    with _servers_record() as servers:
        for port in [p for p, entry in servers.items() if entry.get("home") == str(paths.home)]:
            del servers[port]


def port_owner(port: int) -> dict[str, Any] | None:
    """The live planflow server recorded on `port` (project, home, pid), if any."""
    if not servers_file().exists():
        return None
    with _servers_record() as servers:
        entry = servers.get(str(port))
        if entry and _pid_alive(int(entry.get("pid", 0)), entry):
            return entry
        servers.pop(str(port), None)  # a server that is gone
    return None


def _port_taken(paths: StatePaths, host: str, port: int) -> StackError:
    owner = port_owner(port)
    another = f"`planflow server up --port {port + 1}`"
    if owner is None:
        who = "a Prefect server not started by planflow" if healthy(server_url(host, port)) else "another program"
        return StackError(
            f"port {port} on {host} is already in use by {who}. Fix: stop it, or choose another port with {another}."
        )
    home, project = Path(owner["home"]), Path(owner["project"])
    stop = (
        f"cd {project} && planflow server down"
        if StatePaths(home).project == project
        else f"PLANFLOW_HOME={home} planflow server down"
    )
    return StackError(
        f"port {port} on {host} is held by the planflow server of another project, {project} "
        f"(state folder {home}, pid {owner['pid']}); this project is {paths.project}. Fix: run planflow from "
        f"{project} to use that server, stop it (`{stop}`), or give this project its own port: {another}."
    )


# -- lifecycle --------------------------------------------------------------------------
def chosen_database(paths: StatePaths) -> str:
    """The database of the project's server: the running one's, else the one it last ran on
    (kept across `server down`: `stack up` after `stack down` started an empty SQLite
    server for a project on PostgreSQL), else sqlite."""
    running = paths.recorded().get("db")
    if running in DATABASES:
        return running
    last = paths.last_database()
    if last is None:  # a project older than the record: its cluster, when only it holds data
        held = Cluster(paths).initialized and not (paths.prefect_home / "prefect.db").exists()
        return "postgres" if held else "sqlite"
    return last if last in DATABASES else "sqlite"


UP_TIMEOUT_SECONDS = 120.0  # how long `up` waits for the server to answer


def up(
    paths: StatePaths | None = None,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    timeout: float = UP_TIMEOUT_SECONDS,
    db: str | None = None,
) -> ServerStatus:
    """Start the embedded server unless it already runs; wait until it is healthy.

    `port`: default the port this project's server had last (so that the URL commands
    were given stays right), else 4200. `db`: "sqlite" (a file in the state folder) or
    "postgres" (the scale-out profile: PostgreSQL started by planflow, see postgres.py);
    default the project's (chosen_database)."""
    paths = paths or StatePaths.discover()
    db = db or chosen_database(paths)
    if db not in DATABASES:
        raise StackError(f"db={db!r} is not a database planflow runs. Fix: --db sqlite or --db postgres")
    port = port or int(paths.recorded().get("port") or DEFAULT_PORT)
    current = status(paths)
    if current.running:
        running_db = paths.recorded().get("db", "sqlite")
        if running_db != db:
            raise StackError(
                f"the Prefect server at {current.url} runs on {running_db}, not {db}. "
                f"Fix: `planflow server down`, then `planflow server up --db {db}`"
            )
        return current
    if current.state == "unhealthy":
        # Still starting (another `up` in flight) or hung: give it the timeout.
        if current.url and _wait_healthy(current.url, current.pid, timeout):
            return status(paths)
        down(paths)
    elif current.state == "stale":
        _clean(paths)

    url = server_url(host, port)
    if port_in_use(host, port):
        owner = port_owner(port)
        if owner is not None and owner["home"] == str(paths.home):  # ours, its pid file lost: adopt it
            _write_state(paths, owner["host"], port, owner["pid"], chosen_database(paths))
            return status(paths)
        raise _port_taken(paths, host, port)

    paths.ensure()
    make_state_private(paths)
    database_url = None
    if db == "postgres":
        try:
            database_url = Cluster(paths).up()
        except PostgresError as exc:
            raise StackError(f"the scale-out database could not start: {exc}") from exc
    descriptor = os.open(paths.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "ab") as log, private_files():
        # the server's files (prefect.db, its encryption key, ...) are the user's only
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "planflow.ops.prefect_server",
                "server",
                "start",
                "--host",
                host,
                "--port",
                str(port),
            ],
            env=server_env(paths, host, port, database_url),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=paths.home,
        )
    _write_state(paths, host, port, process.pid, db)
    if not _wait_healthy(url, process.pid, timeout):
        down(paths)
        raise StackError(
            f"the Prefect server did not become healthy at {url} within {timeout:.0f} s. "
            f"Last lines of {paths.log_file}:\n{_tail(paths.log_file)}"
        )
    # the runs that were running when it stopped (their processes ended, each left a note)
    # Prefect's client, imported here: this module is imported before Prefect's settings are
    # (the test harness takes free_port from it, then sets PREFECT_API_URL)
    from planflow.runtime.watchdog import crash_pending  # noqa: PLC0415

    marked = crash_pending(paths.home, url)
    return replace(status(paths), detail="; ".join(marked)) if marked else status(paths)


def _write_state(paths: StatePaths, host: str, port: int, pid: int, db: str = "sqlite") -> None:
    """The pid file and server.json (0600), and this server's line in the per-user record;
    the process is known again by its start (`started_ticks`: ticks since boot, as
    processes.start_ticks; `started`, the wall-clock time, for people and older planflows)."""
    write_private(paths.pid_file, str(pid))
    identity = {"started": psutil.Process(pid).create_time(), "started_ticks": start_ticks(pid)}
    record = {"url": server_url(host, port), "host": host, "port": port, "pid": pid, **identity, "db": db}
    write_private(paths.server_file, json.dumps(record, indent=2))
    write_private(paths.database_file, db)
    _remember(paths, host, port, pid, identity)


def _wait_healthy(url: str, pid: int | None, timeout: float) -> bool:
    """Wait up to `timeout` for `url` to answer; False at once if process `pid` dies."""

    def probe() -> str:
        if healthy(url):
            return "healthy"
        return "dead" if pid is not None and not _pid_alive(pid) else "starting"

    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(0.5),
        retry=retry_if_result(lambda outcome: outcome == "starting"),
    )
    try:
        outcome = retrying(probe)
    except RetryError:
        return False
    return outcome == "healthy"


def down(paths: StatePaths | None = None, timeout: float = 20.0) -> ServerStatus:
    """Stop the embedded server (and its process group) and its PostgreSQL, if any; clean
    its pid files and its line in the per-user record."""
    paths = paths or StatePaths.discover()
    pid = _read_pid(paths)
    process = _server_process(pid, paths.recorded()) if pid is not None else None
    if process is not None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except psutil.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            try:
                process.wait(5)
            except psutil.TimeoutExpired as exc:
                raise StackError(f"the Prefect server (pid {pid}) survived SIGKILL for 5 s") from exc
    _clean(paths)
    if servers_file().exists():
        _forget(paths)
    try:
        Cluster(paths).down()
    except PostgresError as exc:
        raise StackError(f"the Prefect server stopped, but its PostgreSQL did not: {exc}") from exc
    return status(paths)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(os.getpgid(pid), sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
