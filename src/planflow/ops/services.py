"""Start, stop and inspect the monitoring services as background processes on loopback.

Prometheus, Alertmanager and the Pushgateway (Debian binaries) plus planflow's exporter
and bridge, each in its own process group, with pid, log and data under
`<state folder>/monitoring/`. Like `planflow.stack`, `up` is idempotent: a healthy
service recorded there is reused, a stale pid file is cleaned, a port held by
another program is reported with the fix. Nothing is installed silently: a missing
binary is an error naming the `apt-get install` command.

The configs are rendered into the state folder with the ports actually used, and
Alertmanager's credentials made, by `service_configs`.

Trust: every service listens on 127.0.0.1 only. Alertmanager, which turns whatever is
POSTed to its /api/v2/alerts into webhooks the bridge acts on, also asks for basic auth
(`--web.config.file`): a password generated once into the state folder (0600), its
bcrypt hash in `alertmanager-web.yml`; Prometheus gets the same password as a
`password_file` to send alerts and to scrape it. The state folder is its user's only:
services start with umask 077 and `up` makes what an older run left readable private.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from planflow.monitoring import rules as generate
from planflow.ops.postgres import make_state_private
from planflow.ops.processes import (
    log_tail,
    port_in_use,
    read_pid_file,
    same_process,
    spawn,
    stop_group,
    wait_until,
    write_pid_file,
)
from planflow.ops.service_configs import (  # noqa: F401 (re-exported: the services' public names)
    ALERTMANAGER_WEB_CONFIG,
    BRIDGE_RECEIVER,
    HOST,
    PROJECT_THRESHOLDS,
    alertmanager_auth,
    forget_kept_receivers,
    kept_receiver_variables,
    load_thresholds,
    monitoring_dir,
    project_thresholds,
    render_configs,
    rendered_config,
)
from planflow.ops.service_reload import RELOADABLE, ReloadError, config_texts, reload
from planflow.settings import StatePaths, client_env, make_private_dir, private_files, write_private

ORDER = ("pushgateway", "bridge", "exporter", "alertmanager", "prometheus")
BINARIES = {
    "prometheus": ("prometheus",),
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
    "pushgateway": ("prometheus-pushgateway", "pushgateway"),
}
INSTALL = "apt-get install -y prometheus prometheus-alertmanager prometheus-pushgateway"
HEALTH = {
    "prometheus": "/-/ready",
    "alertmanager": "/-/ready",
    "pushgateway": "/-/ready",
    "bridge": "/health",
    "exporter": "/metrics",
}


class ServicesError(RuntimeError):
    """A monitoring service could not be started, found or stopped."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str  # "running" | "stopped" | "stale" | "unhealthy"
    url: str
    pid: int | None = None
    detail: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"


def services_file(paths: StatePaths) -> Path:
    """JSON written by `up`: profile, ports, urls (read by pushgateway_url_from_env)."""
    return monitoring_dir(paths) / "services.json"


def find_binary(service: str) -> str:
    for name in BINARIES[service]:
        found = shutil.which(name)
        if found:
            return found
    raise ServicesError(
        f"{service} is not installed (looked for {', '.join(BINARIES[service])} on PATH). "
        f"Fix: {INSTALL}  (in planflow's repository: `bash scripts/install-services.sh`)"
    )


def _recorded(paths: StatePaths) -> dict:
    try:
        return json.loads(services_file(paths).read_text())
    except (OSError, ValueError):
        return {}


def recorded_profile(paths: StatePaths) -> str | None:
    """The profile the services were last started with (None when none are recorded)."""
    return _recorded(paths).get("profile") or None


def recorded_ports(paths: StatePaths) -> dict[str, int] | None:
    """The ports the services were last started on (None when none are recorded)."""
    ports = _recorded(paths).get("ports")
    return ports if isinstance(ports, dict) else None


def _pid_file(paths: StatePaths, name: str) -> Path:
    return monitoring_dir(paths) / f"{name}.pid"


def _marker(name: str) -> str:
    """What the service's command line holds (a recycled pid's does not)."""
    return {"bridge": "monitoring.bridge", "exporter": "monitoring.exporter"}.get(name, name)


def _live_pid(paths: StatePaths, name: str) -> tuple[int | None, bool]:
    """The recorded pid of `name` (None when none is), and whether that very process
    still runs: the same start time when recorded, and the service's command line."""
    record = read_pid_file(_pid_file(paths, name))
    if record is None:
        return None, False
    pid, started = record
    return pid, same_process(pid, started, marker=_marker(name))


def _auth_for(paths: StatePaths, name: str) -> tuple[str, str] | None:
    return alertmanager_auth(paths) if name == "alertmanager" else None


def _healthy(url: str, name: str, auth: tuple[str, str] | None = None) -> bool:
    try:
        return httpx.get(url + HEALTH[name], timeout=2.0, auth=auth).status_code == 200
    except httpx.HTTPError:
        return False


def status(paths: StatePaths | None = None) -> dict[str, ServiceStatus]:
    paths = paths or StatePaths.discover()
    ports = _recorded(paths).get("ports") or generate.load()["ports"]
    out = {}
    for name in ORDER:
        url = f"http://{HOST}:{ports[name]}"
        pid, alive = _live_pid(paths, name)
        log = monitoring_dir(paths) / f"{name}.log"
        if pid is None:
            out[name] = ServiceStatus(name, "stopped", url, detail="start: planflow stack up")
        elif not alive:
            why = f"pid {pid} is not running (it ended: why is in {log}). Fix: planflow stack up starts it again"
            out[name] = ServiceStatus(name, "stale", url, pid, why)
        elif _healthy(url, name, _auth_for(paths, name)):
            out[name] = ServiceStatus(name, "running", url, pid)
        else:
            why = (
                f"{url}{HEALTH[name]} does not answer (starting, or stuck: read {log}). "
                "Fix: planflow stack down, then planflow stack up"
            )
            out[name] = ServiceStatus(name, "unhealthy", url, pid, why)
    return out


def _command(name: str, paths: StatePaths, ports: dict[str, int], configs: dict) -> list[str]:
    folder = monitoring_dir(paths)
    listen = f"{HOST}:{ports[name]}"
    if name == "prometheus":
        return [
            find_binary(name),
            f"--config.file={configs['prometheus']}",
            f"--storage.tsdb.path={folder / 'prometheus-data'}",
            f"--web.listen-address={listen}",
            f"--web.external-url=http://{listen}",  # the alerts' generatorURL (else the host's name, unreachable)
            "--storage.tsdb.retention.time=15d",
            # no --web.enable-lifecycle: anyone on the host could POST /-/quit; reload is SIGHUP
        ]
    if name == "alertmanager":
        return [
            find_binary(name),
            f"--config.file={configs['alertmanager']}",
            f"--storage.path={folder / 'alertmanager-data'}",
            f"--web.listen-address={listen}",
            f"--web.config.file={folder / ALERTMANAGER_WEB_CONFIG}",
            f"--web.external-url=http://{listen}",  # the externalURL its webhooks carry
            "--cluster.listen-address=",
        ]
    if name == "pushgateway":
        return [
            find_binary(name),
            f"--web.listen-address={listen}",
            f"--persistence.file={folder / 'pushgateway.store'}",
        ]
    if name == "exporter":
        interval = configs["params"].raw["exporter_poll_seconds"]
        return [
            sys.executable,
            "-m",
            "planflow.monitoring.exporter",
            "--host",
            HOST,
            "--port",
            str(ports[name]),
            "--interval",
            str(interval),
        ]
    if name == "bridge":
        return [
            sys.executable,
            "-m",
            "planflow.monitoring.bridge",
            "--host",
            HOST,
            "--port",
            str(ports[name]),
            "--state-dir",
            str(folder),
            # the token is the proof; the receiver name catches a misrouted webhook. (Not
            # --alertmanager-url: tools that replay webhooks, e.g. the tests', send their own.)
            "--receiver",
            BRIDGE_RECEIVER,
        ]
    raise ServicesError(f"unknown service {name!r}; known: {', '.join(ORDER)}")


def _start(name: str, paths: StatePaths, ports: dict[str, int], configs: dict, timeout: float) -> ServiceStatus:
    folder = monitoring_dir(paths)
    current = status(paths)[name]
    if current.running:
        return current
    if current.state == "unhealthy" and current.url:
        # Alive, not answering: still starting (another `stack up`) or busy on a loaded
        # machine, as often as hung. It gets the timeout before it is restarted.
        url, auth = current.url, _auth_for(paths, name)
        wait_until(lambda: _healthy(url, name, auth) or not _live_pid(paths, name)[1], timeout)
        pid, alive = _live_pid(paths, name)  # (another `stack up` may have replaced it meanwhile)
        if alive and _healthy(url, name, auth):
            return ServiceStatus(name, "running", url, pid)
    if current.pid is not None:
        stop(name, paths)
    if port_in_use(HOST, ports[name]):
        raise ServicesError(
            f"port {ports[name]} on {HOST}, wanted by {name}, is used by another program. "
            f"Fix: stop it, or pick another port (`planflow stack up --{name}-port N`)."
        )
    command = _command(name, paths, ports, configs)
    env = dict(os.environ)
    env.update(client_env(paths))
    if os.environ.get("PREFECT_API_URL"):
        env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]
    log = folder / f"{name}.log"
    process = spawn(command, log, env, cwd=folder)
    write_pid_file(_pid_file(paths, name), process.pid)
    url = f"http://{HOST}:{ports[name]}"
    auth = _auth_for(paths, name)
    answered = wait_until(lambda: process.poll() is not None or _healthy(url, name, auth), timeout)
    if answered and process.poll() is None:
        return ServiceStatus(name, "running", url, process.pid)
    ended = "" if process.poll() is None else f" (it exited with code {process.returncode})"
    stop(name, paths)
    raise ServicesError(
        f"{name} did not become healthy at {url}{HEALTH[name]} within {timeout:.0f} s{ended}. "
        f"Last lines of {log}:\n{log_tail(log)}"
    )


def up(
    paths: StatePaths | None = None,
    profile: str = "production",
    ports: dict[str, int] | None = None,
    timeout: float = 60.0,
) -> dict[str, ServiceStatus]:
    """Start every monitoring service that does not already run (the Prefect server is
    planflow.stack's job). A different profile or ports than recorded restarts them."""
    if profile not in generate.PROFILES:
        raise ServicesError(f"unknown profile {profile!r}; choose one of {generate.PROFILES}")
    paths = paths or StatePaths.discover()
    for service in BINARIES:  # all missing binaries reported before anything starts
        find_binary(service)
    wanted = {**load_thresholds(paths)["ports"], **(ports or {})}
    recorded = _recorded(paths)
    if recorded and (recorded.get("profile") != profile or recorded.get("ports") != wanted):
        down(paths, keep_receivers=True)
    # configs, tokens, pid files, and the services' data and logs: the user's only
    with private_files():
        return _up(paths, profile, wanted, timeout)


def _up(paths: StatePaths, profile: str, wanted: dict[str, int], timeout: float) -> dict[str, ServiceStatus]:
    folder = monitoring_dir(paths)
    make_private_dir(folder)
    make_state_private(paths)
    # the services running now: one that `_start` keeps (healthy) keeps its pid
    pids = {name: pid for name in RELOADABLE for pid, alive in [_live_pid(paths, name)] if alive}
    before = config_texts(folder)
    configs = render_configs(paths, profile, wanted)
    after = config_texts(folder)
    write_private(
        services_file(paths),
        json.dumps(
            {
                "profile": profile,
                "ports": wanted,
                "urls": {name: f"http://{HOST}:{wanted[name]}" for name in ORDER},
                "pushgateway_url": f"http://{HOST}:{wanted['pushgateway']}",
                "thresholds": str(project_thresholds(paths) or generate.HERE / "thresholds.yml"),
            },
            indent=2,
        ),
    )
    started = {}
    for name in ORDER:
        started[name] = _start(name, paths, wanted, configs, timeout)
        if name in RELOADABLE and started[name].pid == pids.get(name) and before[name] != after[name]:
            # it runs on what it read at its start: a project's new thresholds, a receiver
            # from the environment, a newer planflow's rules were printed but not used
            _reload(paths, started[name])
            started[name] = replace(started[name], detail="re-read its changed configuration")
    return started


def _reload(paths: StatePaths, service: ServiceStatus) -> None:
    """`service` (running) re-reads its configuration, and has reported it (service_reload)."""
    log = monitoring_dir(paths) / f"{service.name}.log"
    try:
        reload(service.name, service.pid or 0, service.url, _auth_for(paths, service.name), log)
    except ReloadError as exc:
        raise ServicesError(str(exc)) from exc


def stop(name: str, paths: StatePaths | None = None, timeout: float = 15.0) -> None:
    """Stop one service (SIGTERM to its group, SIGKILL after `timeout`) if the process
    recorded for it still runs; forget its pid."""
    paths = paths or StatePaths.discover()
    pid, alive = _live_pid(paths, name)
    if pid is not None and alive and not stop_group(pid, timeout):
        raise ServicesError(f"{name} (pid {pid}) did not exit even after SIGKILL. Fix: look at `ps -o stat {pid}`")
    _pid_file(paths, name).unlink(missing_ok=True)


def down(paths: StatePaths | None = None, keep_receivers: bool = False) -> dict[str, ServiceStatus]:
    """Stop every monitoring service (reverse start order); forget the recorded urls and,
    unless `keep_receivers` (a restart on another profile or ports), the receivers the
    stack was started with (service_configs.KEPT_RECEIVERS)."""
    paths = paths or StatePaths.discover()
    for name in reversed(ORDER):
        stop(name, paths)
    services_file(paths).unlink(missing_ok=True)
    if not keep_receivers:
        forget_kept_receivers(monitoring_dir(paths))
    return status(paths)


def reload_prometheus(paths: StatePaths | None = None) -> None:
    """Ask the running Prometheus to re-read its config and rules (SIGHUP: its HTTP
    lifecycle API stays off, so nobody else can stop it), and wait until it reports that
    it did, as `up` does for a changed configuration."""
    paths = paths or StatePaths.discover()
    pid, alive = _live_pid(paths, "prometheus")
    if pid is None or not alive:
        raise ServicesError("Prometheus is not running here. Fix: `planflow stack up`")
    _reload(paths, status(paths)["prometheus"])
