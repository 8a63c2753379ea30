"""The monitoring services' configs, rendered into the state folder, and Alertmanager's
credentials.

The rules and Prometheus/Alertmanager configs are rendered from the thresholds (the
project's own `monitoring/thresholds.yml`, else planflow's) with the ports actually
used. Alertmanager asks for basic auth: a password generated once into the state folder
(0600), its bcrypt hash in `alertmanager-web.yml`; Prometheus gets the password as a
`password_file` to send alerts to and scrape it, and amtool the same in `amtool-http.yml`
(`--http.config.file`). The bridge's token file lives there too, never in the repository.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

import bcrypt
import yaml

from planflow.monitoring import rules as generate
from planflow.monitoring.bridge import TOKEN_ENV, TOKEN_FILE_NAME, resolve_token
from planflow.monitoring.routing import SETTING_OF, receiver_overrides, receiver_problem, receivers_from_settings
from planflow.settings import StatePaths, write_private

HOST = "127.0.0.1"
ALERTMANAGER_USER = "planflow"
ALERTMANAGER_PASSWORD_FILE = "alertmanager.password"
ALERTMANAGER_WEB_CONFIG = "alertmanager-web.yml"
AMTOOL_HTTP_CONFIG = "amtool-http.yml"  # amtool's --http.config.file: the stack's credentials (RUNBOOK)
# A project may hold its own thresholds (a copy of planflow's, edited): `stack up` uses them.
PROJECT_THRESHOLDS = Path("monitoring") / "thresholds.yml"
BRIDGE_RECEIVER = "planflow-bridge"  # the receiver name in the generated alertmanager.yml


def monitoring_dir(paths: StatePaths) -> Path:
    return paths.home / "monitoring"


def alertmanager_auth(paths: StatePaths) -> tuple[str, str] | None:
    """(user, password) for Alertmanager's API, None before `up` created them.

    >>> httpx.get(f"{status(paths)['alertmanager'].url}/api/v2/alerts", auth=alertmanager_auth(paths))
    """
    try:
        password = (monitoring_dir(paths) / ALERTMANAGER_PASSWORD_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return (ALERTMANAGER_USER, password) if password else None


def alertmanager_credentials(paths: StatePaths) -> Path:
    """The password file (created once, 0600) and the web config holding its bcrypt
    hash; returns the password file, which Prometheus reads."""
    folder = monitoring_dir(paths)
    password_file = folder / ALERTMANAGER_PASSWORD_FILE
    web_config = folder / ALERTMANAGER_WEB_CONFIG
    auth = alertmanager_auth(paths)
    if auth is None:
        write_private(password_file, secrets.token_urlsafe(32) + "\n")
        auth = alertmanager_auth(paths)
        assert auth is not None
    try:
        current = yaml.safe_load(web_config.read_text())["basic_auth_users"][ALERTMANAGER_USER]
        valid = bcrypt.checkpw(auth[1].encode(), current.encode())
    except (OSError, ValueError, TypeError, KeyError):
        valid = False
    if not valid:  # hashing costs ~0.1 s: only when the password changed
        hashed = bcrypt.hashpw(auth[1].encode(), bcrypt.gensalt(rounds=10)).decode()
        write_private(web_config, yaml.safe_dump({"basic_auth_users": {ALERTMANAGER_USER: hashed}}))
    amtool = {"basic_auth": {"username": ALERTMANAGER_USER, "password_file": str(password_file.resolve())}}
    write_private(folder / AMTOOL_HTTP_CONFIG, yaml.safe_dump(amtool))
    return password_file


def project_thresholds(paths: StatePaths) -> Path | None:
    """The project's own `monitoring/thresholds.yml`, when it has one (else planflow's)."""
    own = paths.project / PROJECT_THRESHOLDS
    return own if own.is_file() else None


def load_thresholds(paths: StatePaths) -> dict:
    """The thresholds the stack runs with: the project's own, else planflow's; checked."""
    own = project_thresholds(paths)
    return generate.load(own) if own else generate.load()


def render_configs(paths: StatePaths, profile: str, ports: dict[str, int]) -> dict[str, Path]:
    folder = monitoring_dir(paths)
    own = project_thresholds(paths)
    source = load_thresholds(paths)
    source["ports"] = ports
    p = generate.params(profile, source)
    if own:  # the project's thresholds: its rules are rendered here, checked like planflow's
        rules = folder / "rules.yml"
        rendered = generate.dump(generate.rules(p))
        rules.write_text(rendered.replace(generate.HEADER, f"# Rendered by `planflow stack up` from {own}.\n", 1))
    else:
        rules = generate.HERE / f"rules{generate.suffix(profile)}.yml"
    prometheus = folder / "prometheus.yml"
    password_file = alertmanager_credentials(paths)
    config = _with_alertmanager_auth(generate.prometheus_config(p, rule_file=str(rules)), password_file)
    prometheus.write_text(generate.dump(config))
    token_file = folder / TOKEN_FILE_NAME
    token = resolve_token(token_file)
    credentials = token_file
    if os.environ.get(TOKEN_ENV):  # the bridge uses the env token: give Alertmanager the same
        credentials = folder / "alertmanager.token"
        fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
    alertmanager = folder / "alertmanager.yml"
    alertmanager.write_text(
        generate.dump(
            generate.alertmanager_config(
                p,
                bridge_url=f"http://{HOST}:{ports['bridge']}/alerts",
                credentials_file=str(credentials),
                receivers=receivers_from_settings(p, _kept_receivers(folder, dict(p.receivers))),
            )
        )
    )
    return {"prometheus": prometheus, "alertmanager": alertmanager, "params": p, "rules": rules}


log = logging.getLogger(__name__)
KEPT_RECEIVERS = "receivers.json"  # the receivers' addresses a running stack was given in its environment


def _kept_receivers(folder: Path, configured: dict[str, str]) -> dict[str, str]:
    """The receivers set by PLANFLOW_ALERT_* / PLANFLOW_WATCHDOG_URL at this stack's `up`,
    and those set now (which win): kept, so that a later render without them in its
    environment (another `stack up`, `planflow demo heal`) does not silently send the
    alerts back to the placeholders. Each is kept with the thresholds.yml value it
    overrode (`configured`): once that file says something else, the file wins again. A
    kept value that no longer passes its variable's check is dropped, said in the log.
    `stack down` forgets them."""
    path = folder / KEPT_RECEIVERS
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = {}
    kept: dict[str, dict[str, str | None]] = {}
    for key, entry in (recorded if isinstance(recorded, dict) else {}).items():
        if not isinstance(entry, dict) or entry.get("over") != configured.get(key):
            continue  # unreadable, or thresholds.yml changed since: the file's value is the newer word
        problem = receiver_problem(key, entry.get("value"))
        if problem:
            log.warning("planflow: a kept alert receiver is dropped (%s) from %s", problem, path)
            continue
        kept[key] = entry
    for key, value in receiver_overrides().items():
        kept[key] = {"value": value, "over": configured.get(key)}
    if kept:
        write_private(path, json.dumps(kept, indent=2))
    else:
        path.unlink(missing_ok=True)
    return {key: str(entry["value"]) for key, entry in kept.items()}


def kept_receiver_variables(paths: StatePaths) -> tuple[list[str], Path]:
    """The PLANFLOW_* variables of the receivers the stack keeps from an earlier `up`'s
    environment and this one does not set (their values unsaid: a webhook URL may hold a
    token), and the file they are kept in."""
    path = monitoring_dir(paths) / KEPT_RECEIVERS
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return [], path
    if not isinstance(kept, dict):  # not planflow's: the next render drops it (_kept_receivers)
        return [], path
    now = receiver_overrides()
    variables = [f"PLANFLOW_{SETTING_OF[key].upper()}" for key in kept if key in SETTING_OF and key not in now]
    return sorted(variables), path


def forget_kept_receivers(folder: Path) -> None:
    (folder / KEPT_RECEIVERS).unlink(missing_ok=True)


def _with_alertmanager_auth(config: dict, password_file: Path) -> dict:
    """Prometheus' config, sending its alerts to and scraping Alertmanager with basic auth."""
    auth = {"basic_auth": {"username": ALERTMANAGER_USER, "password_file": str(password_file)}}
    for target in config["alerting"]["alertmanagers"]:
        target.update(auth)
    for job in config["scrape_configs"]:
        if job["job_name"] == "alertmanager":
            job.update(auth)
    return config


def rendered_config(paths: StatePaths, name: str) -> dict:
    return yaml.safe_load((monitoring_dir(paths) / f"{name}.yml").read_text())
