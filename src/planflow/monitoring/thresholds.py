"""thresholds.yml: planflow's alert thresholds, windows and timings, checked when read.

The file is package data (config/thresholds.yml); rules.py renders it into the
Prometheus and Alertmanager files of each profile. It is read through a pydantic model
with `extra="forbid"`, so a typo or a wrong value fails with every problem listed at
once, each with the value, what it must be and an example:

    config/thresholds.yml has 2 problems:
      - profiles.fast: unknown field 'scrape'. Did you mean 'scrape_interval'? Fix: write `scrape_interval: '1s'`. ...
      - thresholds: `failure_rate:` is 5, but it must be a share between 0 and 1 ... Fix: e.g. `failure_rate: 0.5`
"""

from __future__ import annotations

import difflib
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

# Package data: thresholds, the generated rules and their tests, Prometheus and
# Alertmanager configuration ship inside planflow.
HERE = Path(str(files("planflow.monitoring") / "config"))
SOURCE = HERE / "thresholds.yml"
PROFILES = ("fast", "production")


class ThresholdsError(ValueError):
    """thresholds.yml is invalid; the message lists every problem and its fix."""


def seconds(duration: str | int | float) -> int:
    """'2s', '5m', '1h' -> seconds."""
    if isinstance(duration, (int, float)):
        return int(duration)
    match = re.fullmatch(r"(\d+)([smhd])", str(duration).strip())
    if not match:
        raise ValueError(f"bad duration {duration!r} in {SOURCE.name}: use e.g. 2s, 5m, 1h, 7d")
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def duration(value: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value and value % size == 0:
            return f"{value // size}{unit}"
    return f"{value}s"


def _positive_duration(value: str) -> str:
    if not re.fullmatch(r"[1-9]\d*[smhd]", value):
        raise ValueError("not a duration")
    return value


# Written into Prometheus' and Alertmanager's files as is, so only what both read.
Duration = Annotated[str, AfterValidator(_positive_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Ports(_Strict):
    """Loopback ports of the monitoring services (`planflow stack up` may move them)."""

    prometheus: int = Field(ge=1, le=65535)
    pushgateway: int = Field(ge=1, le=65535)
    alertmanager: int = Field(ge=1, le=65535)
    bridge: int = Field(ge=1, le=65535)
    exporter: int = Field(ge=1, le=65535)
    serving: int = Field(default=8000, ge=1, le=65533, description="`planflow serve`'s balancer; replicas +1, +2")


class Profile(_Strict):
    """Timings of one profile: `fast` (demo, tests) or `production`."""

    scrape_interval: Duration
    evaluation_interval: Duration
    group_wait: Duration
    group_interval: Duration
    repeat_interval: Duration
    exporter_poll_seconds: float = Field(gt=0)
    for_: Duration = Field(alias="for", description="how long a condition must hold before firing")
    failure_window: Duration = Field(description="a failed run keeps its alert firing this long")
    failure_rate_window: Duration
    heartbeat_max_age_seconds: int = Field(gt=0)
    rate_window: Duration = Field(description="window of the meta-alerts' rates (failures, errors)")
    bridge_pending_max_age: Duration = Field(description="an alert waiting this long in the bridge's spool")
    watchdog_interval: Duration = Field(description="how often the Watchdog reaches the dead man's switch")
    # defaults: a thresholds.yml written before the anomaly rules keeps working
    anomaly_baseline_window: Duration = Field("7d", description="history a component's usual duration is learned from")
    anomaly_window: Duration = Field("6h", description="the recent runs judged against the baseline")


class Profiles(_Strict):
    fast: Profile
    production: Profile


class Thresholds(_Strict):
    """The same numbers in both profiles."""

    late_runs: int = Field(ge=1)
    overrun_factor: float = Field(gt=1)
    slip_ratio: float = Field(gt=0)
    failure_rate: float = Field(gt=0, le=1)
    failure_rate_min_runs: int = Field(ge=1)
    bridge_spool_depth: int = Field(ge=1)
    notification_failure_ratio: float = Field(gt=0, le=1)
    # defaults: a thresholds.yml written before the anomaly rules keeps working
    anomaly_spreads: float = Field(3.0, gt=0)
    anomaly_runs: int = Field(3, ge=1)
    anomaly_min_history_runs: int = Field(5, ge=2)
    anomaly_min_spread_ratio: float = Field(0.1, gt=0)
    failure_rate_anomaly_factor: float = Field(3.0, ge=1)
    failure_rate_anomaly_increase: float = Field(0.25, ge=0, le=1)
    serving_latency_p99_seconds: float = Field(0.25, gt=0, description="the /predict latency SLO (p99)")
    serving_error_ratio: float = Field(0.01, gt=0, le=1, description="server errors / requests of /predict")
    oom_kills: int = Field(2, ge=1)


class Receivers(_Strict):
    """Where Alertmanager sends what is not only for the bridge. The shipped values are
    placeholders (`.invalid` never resolves); PLANFLOW_ALERT_* variables override them
    in a running stack (see the README, "Alert receivers")."""

    webhook_url: str = Field(pattern=r"^https?://\S+$", description="the human receiver's webhook")
    email_to: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", description="the human receiver's address")
    email_from: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    smarthost: str = Field(pattern=r"^[^:\s]+:\d+$", description="SMTP server as host:port")
    watchdog_url: str = Field(pattern=r"^https?://\S+$", description="the dead man's switch webhook")


class ThresholdsFile(_Strict):
    """The whole of thresholds.yml."""

    grafana_url: str = Field(pattern=r"^https?://\S+$")
    runbook_url: str = Field(pattern=r"^(https?://\S+|[\w./-]+\.md)$")
    receivers: Receivers
    ports: Ports
    profiles: Profiles
    thresholds: Thresholds


# What each field must be, and an example of it.
FIELD_HELP = {
    "grafana_url": ("an http(s) URL", "grafana_url: http://127.0.0.1:3000"),
    "runbook_url": (
        "an http(s) URL or a path of RUNBOOK.md",
        "runbook_url: https://git.example.com/you/project/blob/main/monitoring/RUNBOOK.md",
    ),
    "receivers": ("a mapping of webhook_url, email_to, email_from, smarthost, watchdog_url", "receivers: {...}"),
    "webhook_url": ("an http(s) URL", "webhook_url: https://chat.example.com/hooks/planflow"),
    "watchdog_url": ("an http(s) URL", "watchdog_url: https://deadman.example.com/ping/planflow"),
    "email_to": ("an e-mail address", "email_to: oncall@example.com"),
    "email_from": ("an e-mail address", "email_from: alertmanager@example.com"),
    "smarthost": ("an SMTP server as host:port", "smarthost: smtp.example.com:587"),
    "ports": ("a mapping of service name -> port", "ports: {prometheus: 9090}"),
    "profiles": ("the two profiles, fast and production", "profiles: {fast: {...}, production: {...}}"),
    "thresholds": ("a mapping of threshold name -> number", "thresholds: {late_runs: 1}"),
    "fast": ("a mapping of timings", "fast: {scrape_interval: 1s, ...}"),
    "production": ("a mapping of timings", "production: {scrape_interval: 15s, ...}"),
    **{
        port: ("a port number from 1 to 65535", f"{port}: {default}")
        for port, default in {
            "prometheus": 9090,
            "pushgateway": 9091,
            "alertmanager": 9093,
            "bridge": 9095,
            "exporter": 9096,
        }.items()
    },
    **{
        name: ("a duration: a whole number > 0 and s, m, h or d", f"{name}: {example}")
        for name, example in {
            "scrape_interval": "15s",
            "evaluation_interval": "15s",
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            "for": "5m",
            "failure_window": "15m",
            "failure_rate_window": "30m",
            "rate_window": "5m",
            "bridge_pending_max_age": "10m",
            "watchdog_interval": "1m",
            "anomaly_baseline_window": "7d",
            "anomaly_window": "6h",
        }.items()
    },
    "exporter_poll_seconds": ("a number of seconds > 0", "exporter_poll_seconds: 10"),
    "heartbeat_max_age_seconds": ("a whole number of seconds > 0", "heartbeat_max_age_seconds: 120"),
    "late_runs": ("a whole number >= 1 (late runs on one work queue)", "late_runs: 1"),
    "overrun_factor": ("a number > 1 (times the planned duration)", "overrun_factor: 2.0"),
    "slip_ratio": ("a number > 0 (share of the planned makespan)", "slip_ratio: 0.5"),
    "failure_rate": ("a share between 0 and 1 (failed / finished runs)", "failure_rate: 0.5"),
    "failure_rate_min_runs": ("a whole number >= 1", "failure_rate_min_runs: 3"),
    "bridge_spool_depth": ("a whole number >= 1 (alerts waiting in the bridge)", "bridge_spool_depth: 100"),
    "notification_failure_ratio": ("a share between 0 and 1 (failed / sent)", "notification_failure_ratio: 0.01"),
    "anomaly_spreads": ("a number > 0 (spreads above the median duration)", "anomaly_spreads: 3"),
    "anomaly_runs": ("a whole number >= 1 (slow runs in a row)", "anomaly_runs: 3"),
    "anomaly_min_history_runs": ("a whole number >= 2 (runs in the baseline)", "anomaly_min_history_runs: 5"),
    "anomaly_min_spread_ratio": (
        "a number > 0 (least spread, as a share of the median)",
        "anomaly_min_spread_ratio: 0.1",
    ),
    "failure_rate_anomaly_factor": ("a number >= 1 (times the usual failed share)", "failure_rate_anomaly_factor: 3"),
    "failure_rate_anomaly_increase": ("a share between 0 and 1 (added to it)", "failure_rate_anomaly_increase: 0.25"),
    "oom_kills": ("a whole number >= 1 (kills for memory of one component in a run)", "oom_kills: 2"),
}
# Names users reach for first, mapped to the field thresholds.yml uses.
ALIASES = {
    "grafana": "grafana_url",
    "port": "ports",
    "profile": "profiles",
    "threshold": "thresholds",
    "limits": "thresholds",
    "dev": "fast",
    "test": "fast",
    "prod": "production",
    "scrape": "scrape_interval",
    "evaluation": "evaluation_interval",
    "eval_interval": "evaluation_interval",
    "for_duration": "for",
    "for_seconds": "for",
    "pending": "for",
    "poll_seconds": "exporter_poll_seconds",
    "poll_interval": "exporter_poll_seconds",
    "heartbeat_max_age": "heartbeat_max_age_seconds",
    "overrun": "overrun_factor",
    "overrun_ratio": "overrun_factor",
    "slip": "slip_ratio",
    "slip_factor": "slip_ratio",
    "late": "late_runs",
    "min_runs": "failure_rate_min_runs",
    "runbook": "runbook_url",
    "receiver": "receivers",
    "webhook": "webhook_url",
    "watchdog": "watchdog_url",
    "deadman_url": "watchdog_url",
    "email": "email_to",
    "to": "email_to",
    "from": "email_from",
    "smtp": "smarthost",
    "smtp_smarthost": "smarthost",
    "spool_depth": "bridge_spool_depth",
}
_MODELS = {
    "": ThresholdsFile,
    "ports": Ports,
    "profiles": Profiles,
    "thresholds": Thresholds,
    "receivers": Receivers,
}


_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict = 60, 60, 6, 4


def _model_at(where: tuple[Any, ...]) -> Any:
    """The model of the file's part at `where` (a profile's for `profiles.<name>`), or None."""
    return Profile if len(where) == 2 and where[0] == "profiles" else _MODELS.get(".".join(map(str, where)))


def _fields(where: tuple[Any, ...]) -> list[str]:
    model = _model_at(where)
    return [info.alias or name for name, info in model.model_fields.items()] if model else []


# How a project starts its own thresholds file (the README says the same)
COPY_COMMAND = (
    '`python -c "from planflow.monitoring.thresholds import SOURCE; print(SOURCE.read_text())" '
    "> monitoring/thresholds.yml`"
)


def _home_of(name: str) -> str | None:
    """Where field `name` belongs in the file (`thresholds`, `profiles.fast`, ...), if anywhere."""
    for where in (("thresholds",), ("profiles", "fast"), ("ports",), ("receivers",), ()):
        if name in _fields(where):
            return ".".join(where) if where else "the top level"
    return None


def _help_from_model(where: tuple[Any, ...], name: str, item: Any) -> tuple[str, str]:
    """What a field without FIELD_HELP must be, in pydantic's words ("greater than 0"), and
    its shipped default as the example."""
    expected = str(item.get("msg") or "valid").removeprefix("Input should be ").removeprefix("Value error, ")
    model = _model_at(where)
    field = next((f for key, f in (model.model_fields.items() if model else ()) if (f.alias or key) == name), None)
    default = getattr(field, "default", None)
    shown = default if isinstance(default, (int, float, str)) and not isinstance(default, bool) else "..."
    return expected, f"{name}: {shown}"


def _describe(item: Any) -> str:
    loc, shown = tuple(item["loc"]), _short.repr(item.get("input"))
    if not loc:
        fields = ", ".join(_fields(()))
        return f"the file must be a mapping of {fields}, got {shown}. Fix: start from the shipped thresholds.yml"
    where, name = loc[:-1], str(loc[-1])
    label = ".".join(map(str, where)) or "the file"
    if item["type"] == "extra_forbidden":
        allowed = _fields(where)
        known = f"Allowed fields: {', '.join(allowed)}"
        target = ALIASES.get(name) or next(iter(difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)), None)
        if target in allowed:
            return f"{label}: unknown field '{name}'. Did you mean '{target}'? Fix: write `{target}: {shown}`. {known}"
        if home := _home_of(name):  # a real field, at another level (e.g. a threshold at the top)
            return f"{label}: unknown field '{name}' here; it belongs under `{home}:`. Fix: move it there"
        return f"{label}: unknown field '{name}' (value {shown}). Fix: remove it. {known}"
    expected, example = FIELD_HELP.get(name) or _help_from_model(where, name, item)
    if item["type"] == "missing":
        return f"{label}: `{name}:` is missing; it must be {expected}. Fix: e.g. `{example}`"
    return f"{label}: `{name}:` is {shown}, but it must be {expected}. Fix: e.g. `{example}`"


def validate(document: Any, source: Path | str = SOURCE) -> ThresholdsFile:
    """The file's content as a model, or ThresholdsError listing every problem."""
    try:
        return ThresholdsFile.model_validate(document)
    except ValidationError as exc:
        problems = [_describe(item) for item in exc.errors()]
        partial = [str(item["loc"][0]) for item in exc.errors() if item["type"] == "missing" and len(item["loc"]) == 1]
        if partial:  # an override of a few keys: the file is a whole copy of planflow's, edited
            problems.insert(
                0,
                f"the file lacks {', '.join(partial)}: it is a whole copy of planflow's thresholds, edited, "
                f"not a few overrides. Fix: {COPY_COMMAND}, then edit the values there",
            )
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise ThresholdsError(f"{source} has {count}:\n" + "\n".join(f"  - {p}" for p in problems)) from None


def load(path: Path = SOURCE) -> dict[str, Any]:
    """thresholds.yml, checked, as plain values (keys as in the file)."""
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ThresholdsError(f"{path}: not valid YAML: {exc}") from exc
    return validate(document, path).model_dump(by_alias=True)


@dataclass
class Params:
    """One profile's values, as the rules, their tests and the configs use them."""

    profile: str
    raw: dict[str, Any]
    thresholds: dict[str, Any]
    grafana_url: str
    ports: dict[str, int]
    runbook_url: str = "monitoring/RUNBOOK.md"
    receivers: dict[str, str] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return seconds(self.raw["scrape_interval"])

    @property
    def eval(self) -> int:
        return seconds(self.raw["evaluation_interval"])

    @property
    def for_(self) -> int:
        return seconds(self.raw["for"])

    def sub(self, text: str) -> str:
        values = {
            **self.thresholds,
            "failure_window": duration(seconds(self.raw["failure_window"])),
            "failure_window_seconds": seconds(self.raw["failure_window"]),
            "failure_rate_window": duration(seconds(self.raw["failure_rate_window"])),
            "heartbeat_max_age_seconds": self.raw["heartbeat_max_age_seconds"],
            "rate_window": duration(seconds(self.raw["rate_window"])),
            "bridge_pending_max_age": duration(seconds(self.raw["bridge_pending_max_age"])),
            "bridge_pending_max_age_seconds": seconds(self.raw["bridge_pending_max_age"]),
            "watchdog_interval": duration(seconds(self.raw["watchdog_interval"])),
            "anomaly_baseline_window": duration(seconds(self.raw["anomaly_baseline_window"])),
            "anomaly_window": duration(seconds(self.raw["anomaly_window"])),
        }
        return re.sub(r"\{\{\{(\w+)\}\}\}", lambda m: str(values[m[1]]), text)


def params(profile: str, source: Mapping[str, Any] | None = None) -> Params:
    """The values of `profile` from `source` (default: thresholds.yml), checked."""
    values = load() if source is None else validate(source).model_dump(by_alias=True)
    return Params(
        profile,
        values["profiles"][profile],
        values["thresholds"],
        values["grafana_url"],
        values["ports"],
        values["runbook_url"],
        values["receivers"],
    )
