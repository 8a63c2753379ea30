"""Upload planflow's datasources and dashboards to a running Grafana, idempotently.

    GRAFANA_URL=http://127.0.0.1:3000 GRAFANA_TOKEN=glsa_... planflow grafana publish

Datasources (grafana/provisioning/datasources/planflow.yaml) are created, or updated
in place when their uid exists; dashboards (grafana/dashboards/*.json) are saved with
`overwrite` into the `planflow` folder. Running it twice changes nothing but Grafana's
version counters. The token is a Grafana service account token (role Admin, or Editor
plus datasource write permission).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import niquests
import yaml
from grafana_client import GrafanaApi
from grafana_client.client import GrafanaException, GrafanaUnauthorizedError

from planflow.dashboards.build import build_all
from planflow.ops import services
from planflow.settings import StatePaths

# Package data: Grafana file provisioning (datasources with fixed uids, a dashboard provider).
PROVISIONING_DIR = Path(str(files("planflow.dashboards") / "provisioning"))
DATASOURCES_FILE = PROVISIONING_DIR / "datasources" / "planflow.yaml"
FOLDER_UID = "planflow"
FOLDER_TITLE = "planflow"
URL_ENV, TOKEN_ENV = "GRAFANA_URL", "GRAFANA_TOKEN"
# The same loopback defaults as monitoring/prometheus/thresholds.yml's ports.
DEFAULT_ENV = {"PLANFLOW_PROMETHEUS_URL": "http://127.0.0.1:9090", "PLANFLOW_ALERTMANAGER_URL": "http://127.0.0.1:9093"}
_ENV_REF = re.compile(r"\$\{(\w+)\}|\$(\w+)")
# Keys of a provisioning entry that the HTTP API also takes.
PASSWORD_ENV = "PLANFLOW_ALERTMANAGER_PASSWORD"
_API_KEYS = (
    "name",
    "uid",
    "type",
    "access",
    "url",
    "isDefault",
    "jsonData",
    "basicAuth",
    "basicAuthUser",
    "secureJsonData",
    "user",
)


class GrafanaPublishError(RuntimeError):
    """Grafana could not be reached, refused the token, or refused an object."""


@dataclass
class PublishReport:
    url: str
    datasources: dict[str, str] = field(default_factory=dict)  # uid -> "created" | "updated"
    dashboards: dict[str, str] = field(default_factory=dict)  # uid -> url path in Grafana

    def lines(self) -> list[str]:
        out = [f"datasource {uid}: {action}" for uid, action in self.datasources.items()]
        out += [f"dashboard {uid}: {self.url.rstrip('/')}{path}" for uid, path in self.dashboards.items()]
        return out


def _stack_default(name: str) -> str:
    """The local stack's own Alertmanager password, when `planflow stack up` made one."""
    if name != PASSWORD_ENV:
        return ""
    auth = services.alertmanager_auth(StatePaths.discover())
    return auth[1] if auth else ""


def expand(value: str, env: Mapping[str, str]) -> str:
    """Grafana's `$VAR` / `${VAR}` provisioning syntax, with planflow's loopback defaults."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return env.get(name) or DEFAULT_ENV.get(name) or _stack_default(name)

    return _ENV_REF.sub(lookup, value)


def load_datasources(env: Mapping[str, str] | None = None, path: Path = DATASOURCES_FILE) -> list[dict[str, Any]]:
    """The provisioned datasources as Grafana HTTP API payloads, URLs filled in."""
    env = os.environ if env is None else env
    document = yaml.safe_load(path.read_text())
    sources = []
    for entry in document.get("datasources", []):
        payload = {key: entry[key] for key in _API_KEYS if key in entry}
        payload["url"] = expand(str(payload.get("url", "")), env)
        if "secureJsonData" in payload:
            payload["secureJsonData"] = {k: expand(str(v), env) for k, v in payload["secureJsonData"].items()}
        sources.append(payload)
    return sources


def load_dashboards(folder: Path | None = None) -> list[dict[str, Any]]:
    """The dashboards to publish: the JSON files in `folder`, or built from code."""
    if folder is None:
        return list(build_all().values())
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise GrafanaPublishError(f"no dashboards in {folder}. Fix: planflow grafana generate")
    return [json.loads(path.read_text()) for path in paths]


def connect(url: str, token: str | None, timeout: float = 10.0) -> Any:
    """A grafana-client API object for `url` (a path prefix such as /grafana is kept)."""
    if not re.match(r"^https?://[^/]+", url or ""):
        raise GrafanaPublishError(
            f"GRAFANA_URL={url!r} is not an http(s) URL. Fix: e.g. {URL_ENV}=http://127.0.0.1:3000"
        )
    base = url.rstrip("/") + "/"  # grafana-client joins prefix + "api" without a slash
    return GrafanaApi.from_url(base, credential=token or None, timeout=timeout)


def _explain(exc: BaseException, url: str, doing: str) -> GrafanaPublishError:
    """One clear sentence (what failed, where, the fix) for what grafana-client raised."""
    if isinstance(exc, GrafanaUnauthorizedError):
        return GrafanaPublishError(
            f"Grafana at {url} refused the token while {doing} (401 Unauthorized). "
            f"Fix: set {TOKEN_ENV} to a valid service account token of that Grafana."
        )
    if isinstance(exc, GrafanaException) and exc.status_code == 403:
        return GrafanaPublishError(
            f"Grafana at {url} accepted the token but forbids {doing} (403 Forbidden). "
            f"Fix: give the service account the Admin role (datasources) or Editor (dashboards)."
        )
    if isinstance(exc, niquests.exceptions.ConnectionError) or isinstance(exc, ConnectionError):
        reason = "connection refused" if "refused" in str(exc).lower() else f"cannot connect ({exc})"
        return GrafanaPublishError(
            f"cannot reach Grafana at {url}: {reason}. Fix: start Grafana there or set {URL_ENV} to its address."
        )
    if isinstance(exc, GrafanaException) and exc.status_code == 0:  # timeouts, transport errors
        return GrafanaPublishError(f"no answer from Grafana at {url} while {doing}: {exc}")
    if isinstance(exc, GrafanaException):
        return GrafanaPublishError(f"Grafana at {url} answered {exc.status_code} while {doing}: {exc.message}")
    return GrafanaPublishError(f"publishing to Grafana at {url} failed while {doing}: {exc!r}")


def _call(url: str, doing: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return function(*args, **kwargs)
    except (GrafanaException, niquests.exceptions.RequestException, ConnectionError) as exc:
        raise _explain(exc, url, doing) from exc


def _status(exc: BaseException) -> int | None:
    cause = exc.__cause__
    return getattr(cause, "status_code", None)


def upsert_datasource(api: Any, url: str, source: dict[str, Any]) -> str:
    uid = source["uid"]
    try:
        _call(url, f"reading datasource {uid}", api.datasource.get_datasource_by_uid, uid)
    except GrafanaPublishError as exc:
        if _status(exc) != 404:
            raise
        _call(url, f"creating datasource {uid}", api.datasource.create_datasource, source)
        return "created"
    _call(url, f"updating datasource {uid}", api.datasource.update_datasource_by_uid, uid, source)
    return "updated"


def ensure_folder(api: Any, url: str) -> str:
    try:
        _call(url, f"reading folder {FOLDER_UID}", api.folder.get_folder, FOLDER_UID)
    except GrafanaPublishError as exc:
        if _status(exc) != 404:
            raise
        _call(url, f"creating folder {FOLDER_UID}", api.folder.create_folder, FOLDER_TITLE, uid=FOLDER_UID)
    return FOLDER_UID


def publish(
    url: str | None = None,
    token: str | None = None,
    *,
    datasources: bool = True,
    timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
) -> PublishReport:
    """Upload datasources (create or update by uid) and dashboards (overwrite).

    `url` and `token` default to GRAFANA_URL and GRAFANA_TOKEN."""
    env = os.environ if env is None else env
    url = (url or env.get(URL_ENV) or "").strip()
    token = token if token is not None else env.get(TOKEN_ENV)
    if not url:
        raise GrafanaPublishError(f"no Grafana given. Fix: set {URL_ENV} (and {TOKEN_ENV}) or pass --url.")
    dashboards = load_dashboards()
    api = connect(url, token, timeout)
    report = PublishReport(url)
    folder = ensure_folder(api, url)
    if datasources:
        for source in load_datasources(env):
            report.datasources[source["uid"]] = upsert_datasource(api, url, source)
    for model in dashboards:
        model = {**model, "id": None}  # Grafana matches by uid; a numeric id is per instance
        saved = _call(
            url,
            f"saving dashboard {model['uid']}",
            api.dashboard.update_dashboard,
            {"dashboard": model, "folderUid": folder, "overwrite": True, "message": "planflow grafana publish"},
        )
        report.dashboards[model["uid"]] = (saved or {}).get("url") or f"/d/{model['uid']}"
    return report
