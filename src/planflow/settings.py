"""Where planflow keeps its state, its process settings, and the environment every
Prefect client gets.

The embedded default is a Prefect server on SQLite under a project-local state
folder, `.planflow/` at the project root. Commands find it without the user
exporting anything: `apply_client_env()` points this process's Prefect client at
it, unless the user already chose a server with PREFECT_API_URL.

Process settings come from `PLANFLOW_*` environment variables through one
pydantic-settings class, `PlanflowSettings`, read by `settings()`: made once and made
again whenever a variable it reads changed (tests and commands change the environment
while a process runs).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

STATE_DIR_NAME = ".planflow"
# What makes a folder a project when it has no state folder yet (as in a Prefect project).
PROJECT_MARKERS = ("prefect.yaml", "pyproject.toml", "flows")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
USER_API_URL_ENV = "PLANFLOW_USER_API_URL"


class PlanflowSettings(BaseSettings):
    """planflow's process settings: `PLANFLOW_<FIELD>` environment variables (plus
    Prefect's PREFECT_API_URL and XDG_STATE_HOME, read as they are)."""

    # frozen: settings() hands the same object to every caller until a variable changes
    model_config = SettingsConfigDict(env_prefix="PLANFLOW_", env_ignore_empty=True, extra="ignore", frozen=True)

    home: Path | None = Field(None, description="The state folder. Default: `.planflow/` at the project root.")
    pipelines: Annotated[tuple[str, ...], NoDecode] = Field(
        default_factory=tuple,
        description="More pipeline sources, comma-separated: `pkg.mod:attr` import paths or YAML files.",
    )
    user_api_url: str | None = Field(
        None,
        description="Internal: the PREFECT_API_URL the user exported before planflow set its own "
        "(recorded by `apply_client_env`).",
    )
    prefect_api_url: str | None = Field(
        None, validation_alias="PREFECT_API_URL", description="The Prefect server clients talk to."
    )
    state_home: Path | None = Field(
        None,
        validation_alias="XDG_STATE_HOME",
        description="The user's state folder (default ~/.local/state); planflow keeps its per-user "
        "record of running servers under `planflow/` there.",
    )
    # Read by other modules; declared here so that every PLANFLOW_ variable is in one place.
    pushgateway_url: str | None = Field(None, description="Pushgateway for run metrics (else the recorded one).")
    bridge_token: SecretStr | None = Field(None, description="Bearer token between Alertmanager and the bridge.")
    pickup_timeout_seconds: float = Field(
        120.0, gt=0, description="How long a distributed run waits for a worker to pick up a component."
    )
    child_timeout_seconds: float = Field(
        6 * 3600.0, gt=0, description="How long a distributed component may take in all, once started."
    )
    server_lost_seconds: float = Field(
        30.0, gt=0, description="A run whose Prefect server does not answer this long fails (and exits)."
    )
    crash_after_seconds: float | None = Field(
        None, gt=0, description="A run silent this long counts as crashed (default: 3 flow heartbeats)."
    )
    # Alertmanager's receivers in a running stack (else thresholds.yml's `receivers:`).
    alert_webhook_url: str | None = Field(None, description="The human receiver's webhook.")
    alert_email_to: str | None = Field(None, description="The human receiver's e-mail address.")
    alert_email_from: str | None = Field(None, description="The sender of alert e-mails.")
    alert_smarthost: str | None = Field(None, description="The SMTP server for alert e-mails, host:port.")
    watchdog_url: str | None = Field(None, description="The dead man's switch the Watchdog alert pings.")

    @field_validator("alert_webhook_url", "watchdog_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://\S+", value.strip()):
            raise ValueError("must be an http(s) URL, e.g. https://chat.example.com/hooks/planflow")
        return value.strip() if value else value

    @field_validator("alert_email_to", "alert_email_from")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+", value.strip()):
            raise ValueError("must be an e-mail address, e.g. oncall@example.com")
        return value.strip() if value else value

    @field_validator("alert_smarthost")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^:\s]+:\d+", value.strip()):
            raise ValueError("must be an SMTP server as host:port, e.g. smtp.example.com:587")
        return value.strip() if value else value

    shared_slots: bool = Field(
        True,
        description="Runs take their pools' shared slots (Prefect global concurrency limits) and plan into "
        "the pool calendar; false: each run believes it has the pools to itself (Prefect's default).",
    )
    learn_durations: bool = Field(
        True,
        description="The run's component durations (and peak memory) go into the history the planner "
        "learns from. False for runs whose times should not teach the plans, e.g. on an oversubscribed or "
        "unusual machine, or a benchmark's control group.",
    )
    hold_to_calendar: bool = Field(
        False,
        description="Under policy plan, a component asks for its pool's slots only when its planned start "
        "(kept current by re-planning) has come, or when starting early delays no other run's reservation: "
        "runs start where the calendar says (closer ETAs), at the price of idle pool time when estimates "
        "run long. False: work-conserving, a component starts as soon as its slots are free.",
    )
    slot_lease_seconds: float = Field(
        60.0, ge=60, le=86400, description="Lease on a component's pool slots: a dead run's slots return after it."
    )
    slot_wait_seconds: float = Field(
        6 * 3600.0, gt=0, description="How long a component may wait for its pool's slots held by other runs."
    )
    slot_poll_seconds: float = Field(
        0.25,
        ge=0.05,
        le=10.0,
        description="How often a component waiting for its pool's slots held by other runs asks again "
        "(a little jitter added); shorter starts it sooner after they are free, at one request per ask.",
    )
    slot_wake: bool = Field(
        True,
        description="Runs on one machine tell each other when they give slots back (a Unix socket each, in a "
        "folder private to the user), so a waiting component asks at once instead of at its next poll.",
    )
    keep_reads: bool = Field(
        True,
        description="A process keeps the ResourcePool and PlannerSettings blocks it read for its next runs, "
        "while a subscription to the Prefect server's events says no block changed; false: every run reads "
        "them from the server.",
    )
    server_wait_seconds: float = Field(
        30.0, gt=0, description="How long a run retries the Prefect server when it does not answer for slots."
    )
    dask_address: str | None = Field(
        None,
        description="The Dask scheduler Dask-mode runs use, e.g. tcp://10.0.0.5:8786 (default: the one "
        "`planflow dask up` recorded in the state folder).",
    )
    dask_connect_seconds: float = Field(
        10.0, gt=0, description="How long a Dask-mode run or `planflow dask` waits for the scheduler to answer."
    )
    results_max_mib: float | None = Field(
        2048.0,
        gt=0,
        description="Bound on the results folder: a run's end deletes the oldest results beyond it "
        "that no retry may need (`planflow results gc`); it walks the folder only when the last check "
        "found it over half the bound or was a minute ago or more. Unset (empty): no bound.",
    )
    results_retry_window_seconds: float = Field(
        86400.0,
        ge=0,
        description="Results younger than this are never deleted: a retry of their run may "
        "still read them back (results of runs not in a final state are kept whatever their age).",
    )

    @field_validator("pipelines", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("state_home", mode="after")
    @classmethod
    def _absolute_only(cls, value: Path | None) -> Path | None:
        # The XDG spec: a relative path is invalid and must be ignored.
        return value if value is None or value.is_absolute() else None

    def user_state_dir(self) -> Path:
        """`$XDG_STATE_HOME/planflow` (default `~/.local/state/planflow`)."""
        return (self.state_home or Path.home() / ".local" / "state") / "planflow"


class SettingsError(ValueError):
    """An environment variable planflow reads holds a bad value; the message names each."""


def _variable(field: str) -> str:
    alias = PlanflowSettings.model_fields[field].validation_alias if field in PlanflowSettings.model_fields else None
    return alias if isinstance(alias, str) else f"PLANFLOW_{field.upper()}"


# The variables PlanflowSettings' fields read, aliases included (PREFECT_API_URL,
# XDG_STATE_HOME), from the model as `_variable` names them, so that a field added with an
# alias of its own is watched too. Names match case-insensitively, as in PlanflowSettings.
_READ_AS_IS = frozenset(_variable(field).upper() for field in PlanflowSettings.model_fields)
# The last settings made, with the variables they were made from: parsing them costs 2-3 ms
# and a run asked about ten times (a fifth of a trivial component's cost, sampled by py-spy).
_last: tuple[tuple[tuple[str, str], ...], PlanflowSettings] | None = None


def _variables() -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted(
            (name, value)
            for name, value in os.environ.items()
            if name.upper().startswith("PLANFLOW_") or name.upper() in _READ_AS_IS
        )
    )


def settings() -> PlanflowSettings:
    """The settings as the environment holds them now (made again whenever a variable they
    read changed); SettingsError names every bad one."""
    global _last
    variables = _variables()
    last = _last
    if last is not None and last[0] == variables:
        return last[1]
    try:
        made = PlanflowSettings()
    except ValidationError as exc:
        problems = [
            f"{_variable(str(error['loc'][0]))}={error.get('input')!r}: {error['msg']}" for error in exc.errors()
        ]
        raise SettingsError(
            "bad environment variable(s): " + "; ".join(problems) + ". Fix: correct or unset them."
        ) from None
    _last = (variables, made)
    return made


def project_root(start: Path | None = None) -> Path:
    """The project folder `start` (default: cwd) lies in.

    The nearest folder upwards holding `.planflow/`; else the nearest holding
    `prefect.yaml`, `pyproject.toml` or `flows/`; else `start` itself. A `.planflow/`
    in the user's home folder (or above it) only counts when you stand there: it was
    left by a command run in the home folder and belongs to no project below it.
    """
    here = (start or Path.cwd()).resolve()
    home = Path.home().resolve()
    folders = (here, *here.parents)
    for folder in folders:
        if folder != here and folder in (home, *home.parents):
            break
        if (folder / STATE_DIR_NAME).is_dir():
            return folder
    for folder in folders:
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            return folder
    return here


def make_private_dir(path: Path) -> Path:
    """Create `path` (and its parents) readable by its user only (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


PRIVATE_UMASK = 0o077  # files 0600, folders 0700


@contextmanager
def private_files() -> Iterator[None]:
    """Within the block, files and folders this process (and any process it starts)
    creates are its user's only: the umask is PRIVATE_UMASK, restored afterwards."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def make_private_tree(root: Path, open_root: bool = False) -> list[Path]:
    """Make `root` and everything below it its user's only (folders 0700, files 0600,
    executable files 0700), as left by an older planflow or another umask. Symlinks are
    not followed. `open_root`: `root` stays 0711 (traversal, no listing), the path another
    account needs to its own folder in it (PostgreSQL's, see ops/postgres.py). Returns
    the paths whose mode changed."""
    changed = []
    if not root.is_dir():
        return changed
    paths = [root]
    for folder, dirs, files in os.walk(root):
        paths += [Path(folder) / name for name in (*dirs, *files)]
    for path in paths:
        try:
            info = path.lstat()
        except FileNotFoundError:  # removed meanwhile (a service's temporary file)
            continue
        if stat.S_ISLNK(info.st_mode):
            continue
        mode = stat.S_IMODE(info.st_mode)
        wanted = 0o700 if stat.S_ISDIR(info.st_mode) or mode & 0o100 else 0o600
        if open_root and path == root:
            wanted = 0o711
        if mode != wanted:
            path.chmod(wanted)
            changed.append(path)
    return changed


def write_private(path: Path, text: str | bytes) -> None:
    """Write `text` to `path` readable by its user only (0600), also when it existed."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb" if isinstance(text, bytes) else "w") as file:
        os.fchmod(descriptor, 0o600)
        file.write(text)


@dataclass(frozen=True)
class StatePaths:
    """The files of one planflow state folder."""

    home: Path

    @classmethod
    def discover(cls) -> StatePaths:
        home = settings().home or project_root() / STATE_DIR_NAME
        return cls(home.resolve())

    @property
    def project(self) -> Path:
        """The project folder this state belongs to (the folder holding `.planflow/`)."""
        return self.home.parent if self.home.name == STATE_DIR_NAME else self.home

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def results(self) -> Path:
        return self.home / "results"

    @property
    def pid_file(self) -> Path:
        return self.home / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    @property
    def server_file(self) -> Path:
        """JSON written by `planflow server up`: url, host, port, pid, started."""
        return self.home / "server.json"

    @property
    def database_file(self) -> Path:
        """The database the project's server last ran on: sqlite or postgres (kept across
        `server down`, read by `server up`; see ops/server.py's chosen_database)."""
        return self.home / "server-db"

    def last_database(self) -> str | None:
        """What `database_file` holds (None when there is none yet)."""
        try:
            return self.database_file.read_text().strip() or None
        except OSError:
            return None

    def serves(self, api_url: str) -> bool:
        """Is `api_url` the one this state folder's server is recorded at (server.json)?"""
        recorded = self.recorded_url()
        return bool(recorded) and recorded.rstrip("/") == api_url.rstrip("/")

    def ensure(self) -> StatePaths:
        """Create the state folder and its Prefect home, private to the user (a state
        folder opened for traversal, 0711, stays so: a PostgreSQL cluster's path, see
        ops/postgres.py; made 0700 even for a moment, a checkpoint then failed)."""
        if not (self.home.is_dir() and stat.S_IMODE(self.home.stat().st_mode) == 0o711):
            make_private_dir(self.home)
        for folder in (self.prefect_home, self.results):
            make_private_dir(folder)
        return self

    def recorded(self) -> dict:
        try:
            record = json.loads(self.server_file.read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def recorded_url(self) -> str | None:
        return self.recorded().get("url")


def server_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/api"


def client_env(paths: StatePaths | None = None) -> dict[str, str]:
    """Environment variables that point a Prefect client at the embedded server.

    A PREFECT_API_URL the user exported wins: that is how planflow runs against a
    scaled-out server (PostgreSQL, Kubernetes) instead of the embedded one.
    PREFECT_HOME is the server's own only once a server was started here: Prefect
    creates its home when imported, and a command that starts no server leaves no
    state folder behind.
    """
    paths = paths or StatePaths.discover()
    env = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOCAL_STORAGE_PATH": str(paths.results),
        "PLANFLOW_HOME": str(paths.home),
    }
    if paths.prefect_home.is_dir():
        env["PREFECT_HOME"] = str(paths.prefect_home)
    url = settings().prefect_api_url or paths.recorded_url()
    env["PREFECT_API_URL"] = url or server_url(DEFAULT_HOST, DEFAULT_PORT)
    return env


def user_api_url() -> str | None:
    """The Prefect server the user chose by exporting PREFECT_API_URL, if any."""
    return settings().user_api_url


def apply_client_env(paths: StatePaths | None = None) -> dict[str, str]:
    """Export `client_env()` into this process (before Prefect reads its settings).

    Called by the console script's `main()`, never at import."""
    env = client_env(paths)
    chosen = settings().prefect_api_url  # exported before planflow set anything
    if chosen:
        os.environ[USER_API_URL_ENV] = chosen
    else:
        os.environ.pop(USER_API_URL_ENV, None)
    for key, value in env.items():
        if key == "PREFECT_API_URL" and chosen:
            continue
        os.environ[key] = value
    return env
