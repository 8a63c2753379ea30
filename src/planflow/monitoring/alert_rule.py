"""What an alert rule is made of, and the promtool scenario that tests it.

An `AlertRule` holds PromQL with `{{{placeholders}}}` from thresholds.yml, its
severity, where it is delivered and how to test it (`scenario`: Params -> Scenario).
Severities follow the Kubernetes mixin's conventions: `critical` only for what needs
a human now, `warning` for what needs one soon (one failed run is a warning), `info`
for what is worth a look (an anomaly against a learned baseline), `none` for the
Watchdog, which fires always.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from planflow.monitoring.thresholds import Params
from planflow.prefect import reserved

SEVERITIES = ("critical", "warning", "info", "none")

# The remediation machinery's own work pool and flows (planflow.prefect.reserved). Pool
# alerts never include them, so that the failover and the rescale are never fed by the
# remediation's own runs.
REMEDIATION_POOL = reserved.REMEDIATION_POOL
REMEDIATION_FLOWS = reserved.REMEDIATION_FLOW_NAMES

# Series labels the scenarios use: scraped from the exporter.
EXPORTER = {"job": "planflow-exporter", "instance": "127.0.0.1:9096"}


@dataclass
class Scenario:
    """A promtool test: input series, an eval time where the alert fires (with the
    labels it must carry) and one where it must not."""

    series: list[tuple[str, str]]
    fire_at: int
    labels: dict[str, str]
    quiet_at: list[int] = field(default_factory=list)
    more_labels: list[dict[str, str]] = field(default_factory=list)  # more alerts firing at fire_at


@dataclass
class AlertRule:
    name: str
    severity: str
    dashboard: str
    expr: str  # with {{{placeholders}}} from thresholds.yml
    summary: str
    description: str
    scenario: Callable[[Params], Scenario]
    for_zero: bool = False  # a fact (a failed run), not a condition to confirm
    # Prefect can act on it: Alertmanager sends it to the bridge too (every alert but
    # the Watchdog reaches the human receiver directly).
    to_bridge: bool = False

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"alert {self.name}: severity {self.severity!r} is not one of {SEVERITIES}")

    @property
    def anchor(self) -> str:
        """Its section of monitoring/RUNBOOK.md: `## PlanflowBridgeDown` -> `planflowbridgedown`."""
        return self.name.lower()


def sel(metric: str, labels: dict[str, str]) -> str:
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def step_series(p: Params, low: float, high: float) -> tuple[str, int]:
    """low for 10 samples, then high long enough; returns (values, crossing time)."""
    before, after = 10, math.ceil((p.for_ + 10 * p.step) / p.step)
    return f"{low}x{before} {high}x{after}", (before + 1) * p.step


def step_scenario(
    metric: str,
    labels: dict[str, str],
    low: float,
    high: float,
    extra: dict[str, str] | None = None,
    also: list[tuple[str, str]] | None = None,
) -> Callable[[Params], Scenario]:
    """`metric{labels}` steps from low to high: quiet before, firing `for` after.
    `also`: more series (selector, values with `{n}` for the number of samples)."""

    def build(p: Params) -> Scenario:
        values, crossing = step_series(p, low, high)
        n = (crossing + p.for_) // p.step + 20
        more = [(selector, text.format(n=n)) for selector, text in also or []]
        return Scenario(
            [(sel(metric, labels), values), *more],
            crossing + p.for_ + 2 * p.eval,
            {**labels, **(extra or {})},
            quiet_at=[crossing - p.step],
        )

    return build
