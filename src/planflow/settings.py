"""Where planflow keeps its state, and the environment every Prefect client gets.

The embedded default is a Prefect server on SQLite under a project-local state
folder, `.planflow/` at the project root. Commands find it without the user
exporting anything: `apply_client_env()` points this process's Prefect client at
it, unless the user already chose a server with PREFECT_API_URL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

STATE_DIR_NAME = ".planflow"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200


def project_root(start: Path | None = None) -> Path:
    """The nearest folder, from `start` (default: cwd) upwards, holding `.planflow/`
    or a `pyproject.toml`; the start folder itself when there is none."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / STATE_DIR_NAME).is_dir():
            return folder
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return here


@dataclass(frozen=True)
class StatePaths:
    """The files of one planflow state folder."""

    home: Path

    @classmethod
    def discover(cls) -> StatePaths:
        explicit = os.environ.get("PLANFLOW_HOME")
        home = Path(explicit) if explicit else project_root() / STATE_DIR_NAME
        return cls(home.resolve())

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
        """JSON written by `planflow server up`: url, port, pid."""
        return self.home / "server.json"

    def recorded_url(self) -> str | None:
        try:
            return json.loads(self.server_file.read_text())["url"]
        except (OSError, ValueError, KeyError):
            return None


def server_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/api"


def client_env(paths: StatePaths | None = None) -> dict[str, str]:
    """Environment variables that point a Prefect client at the embedded server.

    A PREFECT_API_URL the user exported wins: that is how planflow runs against a
    scaled-out server (PostgreSQL, Kubernetes) instead of the embedded one.
    """
    paths = paths or StatePaths.discover()
    env = {
        "PREFECT_HOME": str(paths.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOCAL_STORAGE_PATH": str(paths.results),
        "PLANFLOW_HOME": str(paths.home),
    }
    url = os.environ.get("PREFECT_API_URL") or paths.recorded_url()
    env["PREFECT_API_URL"] = url or server_url(DEFAULT_HOST, DEFAULT_PORT)
    return env


USER_API_URL_ENV = "PLANFLOW_USER_API_URL"


def user_api_url() -> str | None:
    """The Prefect server the user chose by exporting PREFECT_API_URL, if any."""
    return os.environ.get(USER_API_URL_ENV) or None


def apply_client_env(paths: StatePaths | None = None) -> dict[str, str]:
    """Export `client_env()` into this process (before Prefect reads its settings).

    Called by the console script's `main()`, never at import."""
    env = client_env(paths)
    if os.environ.get("PREFECT_API_URL"):  # exported before planflow set anything
        os.environ[USER_API_URL_ENV] = os.environ["PREFECT_API_URL"]
    else:
        os.environ.pop(USER_API_URL_ENV, None)
    for key, value in env.items():
        if key == "PREFECT_API_URL" and os.environ.get(key):
            continue
        os.environ[key] = value
    return env
