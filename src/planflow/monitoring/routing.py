"""Alertmanager's routes, receivers and inhibition rules.

    PlanflowWatchdog                    -> planflow-watchdog (dead man's switch), every watchdog_interval
    alerts Prefect can act on           -> planflow-bridge, and on to ...
    everything else (the default route) -> planflow-human (webhook + e-mail)

The alerts about the alerting never pass through the bridge or Prefect, so an alert
about them is delivered while they are down. Inhibition: while the Prefect API is down
the pool and bridge-delivery alerts it causes are held back; while the bridge is down,
so are its spool and forwarding alerts.

The receivers' addresses come from thresholds.yml (`receivers:`, placeholders) and, in
a running stack, from PLANFLOW_ALERT_WEBHOOK_URL, PLANFLOW_ALERT_EMAIL_TO,
PLANFLOW_ALERT_EMAIL_FROM, PLANFLOW_ALERT_SMARTHOST and PLANFLOW_WATCHDOG_URL, kept for
the stack's later renders (a `stack up` or a demo without them) until `stack down`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from planflow.monitoring.alert_rule import AlertRule
from planflow.monitoring.meta_alerts import WATCHDOG
from planflow.monitoring.thresholds import Params, duration, seconds
from planflow.settings import PlanflowSettings, settings

HUMAN, BRIDGE, DEADMAN = "planflow-human", "planflow-bridge", "planflow-watchdog"
GROUP_BY = ["alertname", "pipeline", "flow", "deployment", "work_pool", "work_queue", "component"]

# source alert -> the alerts it causes, held back while it fires
INHIBITIONS = {
    "PlanflowPrefectApiDown": (
        "PlanflowLateRunBacklog",
        "PlanflowWorkPoolNotReady",
        "PlanflowWorkerHeartbeatStale",
        "PlanflowPoolFailureRateHigh",
        "PlanflowBridgeForwardFailing",
        "PlanflowBridgeDeliveryStalled",
        "PlanflowBridgeSpoolBacklog",
    ),
    "PlanflowBridgeDown": (
        "PlanflowBridgeForwardFailing",
        "PlanflowBridgeDeliveryStalled",
        "PlanflowBridgeSpoolBacklog",
    ),
}
# PLANFLOW_* setting -> the receivers: field it overrides
OVERRIDES = {
    "alert_webhook_url": "webhook_url",
    "alert_email_to": "email_to",
    "alert_email_from": "email_from",
    "alert_smarthost": "smarthost",
    "watchdog_url": "watchdog_url",
}
SETTING_OF = {field: name for name, field in OVERRIDES.items()}  # receivers: field -> its settings field


def receiver_overrides() -> dict[str, str]:
    """The PLANFLOW_ALERT_* / PLANFLOW_WATCHDOG_URL values set in this environment, by the
    `receivers:` field each overrides (checked by the settings class: a bad one is a
    SettingsError naming the variable, its value and an example)."""
    current = settings()
    return {key: value for name, key in OVERRIDES.items() if (value := getattr(current, name))}


def receiver_problem(key: str, value: object) -> str | None:
    """Why `value` cannot be the receivers: field `key` (the check its PLANFLOW_* variable
    gets), None when it can."""
    if key not in SETTING_OF or not isinstance(value, str):
        return f"{key}={value!r} is not a receiver address planflow sets"
    try:
        PlanflowSettings.model_validate({SETTING_OF[key]: value})
    except ValidationError as exc:
        return f"{key}={value!r}: {exc.errors()[0]['msg']}"
    return None


def receivers_from_settings(p: Params, kept: dict[str, str] | None = None) -> dict[str, str]:
    """thresholds.yml's receivers, with `kept` (those a running stack was started with)
    and, over both, the values set in this environment (receiver_overrides)."""
    return {**p.receivers, **(kept or {}), **receiver_overrides()}


def _names(alerts: list[AlertRule]) -> str:
    return "|".join(a.name for a in alerts)


def routes(p: Params, alerts: list[AlertRule]) -> dict[str, Any]:
    timing = {k: p.raw[k] for k in ("group_wait", "group_interval", "repeat_interval")}
    beat = seconds(p.raw["watchdog_interval"])
    return {
        "receiver": HUMAN,
        "group_by": GROUP_BY,
        **timing,
        "routes": [
            {
                "receiver": DEADMAN,
                "matchers": [f'alertname="{WATCHDOG}"'],
                "group_wait": "0s",
                # a group is flushed every group_interval, and re-sent only if repeat_interval
                # has passed since the last send: a slightly shorter repeat_interval re-sends at
                # every flush (equal ones would skip every other flush)
                "group_interval": duration(beat),
                "repeat_interval": duration(max(1, beat * 5 // 6)),
            },
            {
                "receiver": BRIDGE,
                "matchers": [f'alertname=~"{_names([a for a in alerts if a.to_bridge])}"'],
                "continue": True,
                **timing,
            },
            # every alert but the Watchdog reaches a human, the bridge's too
            {"receiver": HUMAN},
        ],
    }


def receivers(p: Params, bridge: dict[str, Any], chosen: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The three receivers; `bridge` is the bridge's webhook config, `chosen` the
    addresses (default: thresholds.yml's)."""
    r = chosen or p.receivers
    return [
        {
            "name": HUMAN,
            "webhook_configs": [{"url": r["webhook_url"], "send_resolved": True, "max_alerts": 0}],
            "email_configs": [
                {
                    "to": r["email_to"],
                    "from": r["email_from"],
                    "smarthost": r["smarthost"],
                    "send_resolved": True,
                }
            ],
        },
        {"name": BRIDGE, "webhook_configs": [bridge]},
        {"name": DEADMAN, "webhook_configs": [{"url": r["watchdog_url"], "send_resolved": False}]},
    ]


def inhibit_rules() -> list[dict[str, Any]]:
    return [
        {"source_matchers": [f'alertname="{source}"'], "target_matchers": [f'alertname=~"{"|".join(targets)}"']}
        for source, targets in INHIBITIONS.items()
    ]
