"""Running Prometheus and Alertmanager re-read a configuration `stack up` changed.

`planflow stack up` on a running stack renders the services' configuration again (a
project's new `monitoring/thresholds.yml`, a receiver from PLANFLOW_ALERT_WEBHOOK_URL, a
newer planflow's rules). Both services read it only at their start or on SIGHUP: the
running ones kept the old rules and receivers while `up` printed the new thresholds.
So `up` compares what each reads before and after it renders, and sends SIGHUP to a
running service whose configuration changed, then waits for its reload to be reported
(`<service>_config_last_reload_success_timestamp_seconds` moving on, in its own
metrics) and fails naming its log when the service refused the new configuration.

    before = config_texts(folder)
    ... render ...
    if config_texts(folder)["prometheus"] != before["prometheus"]: reload("prometheus", pid, url, None, log)
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import yaml

from planflow.ops.processes import log_tail
from planflow.ops.waiting import wait_for

RELOADABLE = ("prometheus", "alertmanager")
RELOAD_SECONDS = 30.0  # the longest a service may take to report its reload
POLL_SECONDS = 0.2


class ReloadError(RuntimeError):
    """A service did not take its new configuration."""


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def config_texts(folder: Path) -> dict[str, str]:
    """What each reloadable service reads, as text: Prometheus its config and the rule
    files it names, Alertmanager its config ("" where a file is missing)."""
    prometheus = _text(folder / "prometheus.yml")
    try:
        rule_files = (yaml.safe_load(prometheus) or {}).get("rule_files") or []
    except yaml.YAMLError:
        rule_files = []
    rules = "".join(_text(Path(name)) for name in rule_files)
    return {"prometheus": prometheus + rules, "alertmanager": _text(folder / "alertmanager.yml")}


def _last_reload(name: str, url: str, auth: tuple[str, str] | None) -> tuple[float, bool] | None:
    """(when the service last took its configuration, whether its last reload succeeded),
    from its metrics; None when it does not answer."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=2.0, auth=auth).text
    except httpx.HTTPError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in (f"{name}_config_last_reload_success_timestamp_seconds", f"{name}_config_last_reload_successful"):
            values[key] = float(value)
    if len(values) < 2:
        return None
    return values[f"{name}_config_last_reload_success_timestamp_seconds"], bool(
        values[f"{name}_config_last_reload_successful"]
    )


def reload(name: str, pid: int, url: str, auth: tuple[str, str] | None, log: Path) -> None:
    """SIGHUP to `name` (process `pid`), then wait until it reports the new configuration
    taken; ReloadError naming its log when it refused it or said nothing in time."""
    before = _last_reload(name, url, auth)

    def taken() -> bool:
        now = _last_reload(name, url, auth)
        if now is not None and not now[1]:
            raise ReloadError(
                f"{name} refused its new configuration and runs on with the old one. "
                f"Fix: the error in {log}, then `planflow stack up` again. Last lines:\n{log_tail(log)}"
            )
        return now is not None and (before is None or now[0] > before[0])

    def silent(message: str) -> ReloadError:
        return ReloadError(
            f"{name} (pid {pid}) did not report re-reading its configuration after SIGHUP: {message}. "
            f"Fix: `planflow stack down` and `planflow stack up`. Last lines of {log}:\n{log_tail(log)}"
        )

    os.kill(pid, signal.SIGHUP)
    wait_for(taken, RELOAD_SECONDS, f"{name}'s reload to be reported in its metrics", POLL_SECONDS, error=silent)
