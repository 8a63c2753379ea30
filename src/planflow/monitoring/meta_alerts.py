"""The alerts about the alerting: the Watchdog, and every part of the loop failing.

None goes to the bridge: Alertmanager delivers them to the human receiver directly, so
that an alert about the bridge or about Prefect does not depend on the bridge or on
Prefect (`planflow.monitoring.routing`). What cannot alert about itself (Prometheus or
Alertmanager gone) is told by the Watchdog going silent at the dead man's switch.
"""

from __future__ import annotations

import math

from planflow.monitoring.alert_rule import (
    EXPORTER,
    REMEDIATION_POOL,
    AlertRule,
    Scenario,
    sel,
    step_scenario,
)
from planflow.monitoring.thresholds import Params, seconds

WATCHDOG = "PlanflowWatchdog"
PROMETHEUS = {"job": "prometheus", "instance": "127.0.0.1:9090"}
ALERTMANAGER = {"job": "alertmanager", "instance": "127.0.0.1:9093"}
PUSHGATEWAY = {"job": "planflow-pushgateway", "instance": "127.0.0.1:9091"}
BRIDGE = {"job": "planflow-bridge", "instance": "127.0.0.1:9095"}
# The exporter counts the remediation machinery's own runs apart from every pool's.
REMEDIATION_RUNS = "planflow_prefect_remediation_runs_finished_total"
FAILED_RUN = '{state=~"failed|crashed"}'
TO_ALERTMANAGER = {**PROMETHEUS, "alertmanager": "http://127.0.0.1:9093/api/v2/alerts"}


def _watchdog(p: Params) -> Scenario:
    return Scenario([], 10 * p.eval, {})


def _counter_scenario(
    metric: str, labels: dict[str, str], total: tuple[str, dict[str, str], int] | None = None, per_step: int = 1
):
    """`metric{labels}` (a counter) flat, then rising by `per_step` a sample. With `total`
    (metric, labels, per step): a counter of all attempts rising all along."""

    def build(p: Params) -> Scenario:
        before = 10
        n = math.ceil((p.for_ + seconds(p.raw["rate_window"])) / p.step) + 2 * before
        series = [(sel(metric, labels), f"0x{before} 0+{per_step}x{n}")]
        if total:
            series.append((sel(total[0], total[1]), f"0+{total[2]}x{before + n}"))
        crossing = (before + 1) * p.step
        return Scenario(series, crossing + p.for_ + 2 * p.eval, labels, quiet_at=[crossing - p.step])

    return build


def _remediation_run_failed(p: Params) -> Scenario:
    """The exporter's counter of remediation runs appears at 1 (a first crashed run), then
    stays: fires, then quiet; completed runs rising beside it never fire."""
    window = seconds(p.raw["failure_window"])
    appears = 100 * p.step
    labels = {**EXPORTER, "flow": "planflow-failover", "state": "crashed"}
    done = {**labels, "state": "completed"}
    n = math.ceil(3 * window / p.step)
    return Scenario(
        [
            (sel(REMEDIATION_RUNS, labels), f"_x{appears // p.step} 1x{n}"),
            (sel(REMEDIATION_RUNS, done), f"0+1x{appears // p.step + n}"),
        ],
        appears + p.step,
        labels,
        quiet_at=[appears - p.step, appears + 2 * window],
    )


def _remediation_action_failed(p: Params) -> Scenario:
    """The audit's counter appears at 1 (a first failure), then stays: fires, then quiet."""
    window = seconds(p.raw["failure_window"])
    appears = 100 * p.step
    labels = {"job": "planflow-remediation", "instance": "", "action": "failover", "outcome": "failed"}
    done = {**labels, "outcome": "succeeded"}
    n = math.ceil(3 * window / p.step)
    return Scenario(
        [
            (sel("planflow_remediations_total", labels), f"_x{appears // p.step} 1x{n}"),
            (sel("planflow_remediations_total", done), f"0+1x{appears // p.step + n}"),
        ],
        appears + p.step,
        labels,
        quiet_at=[appears - p.step, appears + 2 * window],
    )


def _down(name: str, severity: str, labels: dict[str, str], what: str, fix: str) -> AlertRule:
    job = labels["job"]
    return AlertRule(
        name,
        severity,
        "planflow-alerts",
        f'up{{job="{job}"}} == 0 or absent(up{{job="{job}"}})',
        f"{what} is down",
        f"Prometheus cannot scrape {what} (job {job}). {fix}",
        step_scenario("up", labels, 1, 0),
    )


META_ALERTS = [
    AlertRule(
        WATCHDOG,
        "none",
        "planflow-alerts",
        "vector(1)",
        "The alerting pipeline works (always firing)",
        "Always firing, sent to the dead man's switch every {{{watchdog_interval}}}. Its ABSENCE is the "
        "alert: Prometheus, Alertmanager or the path between them is down.",
        _watchdog,
        for_zero=True,
    ),
    _down(
        "PlanflowAlertmanagerDown",
        "critical",
        ALERTMANAGER,
        "Alertmanager",
        "No alert is delivered: the dead man's switch tells, as the Watchdog stops. Fix: `planflow stack up`.",
    ),
    AlertRule(
        "PlanflowAlertmanagerConfigReloadFailed",
        "critical",
        "planflow-alerts",
        "alertmanager_config_last_reload_successful == 0",
        "Alertmanager at {{ $labels.instance }} could not load its configuration",
        "Alertmanager's last configuration reload failed: it routes with an older configuration.",
        step_scenario("alertmanager_config_last_reload_successful", ALERTMANAGER, 1, 0),
    ),
    AlertRule(
        "PlanflowAlertmanagerNotificationsFailing",
        "warning",
        "planflow-alerts",
        "rate(alertmanager_notifications_failed_total[{{{rate_window}}}])\n"
        "  / rate(alertmanager_notifications_total[{{{rate_window}}}]) > {{{notification_failure_ratio}}}",
        "Alertmanager fails to send {{ $labels.integration }} notifications",
        "More than {{{notification_failure_ratio}}} of Alertmanager's {{ $labels.integration }} "
        "notifications failed in the last {{{rate_window}}}: a receiver (the bridge, the human "
        "webhook or e-mail, the dead man's switch) is unreachable or refuses them.",
        _counter_scenario(
            "alertmanager_notifications_failed_total",
            {**ALERTMANAGER, "integration": "webhook"},
            ("alertmanager_notifications_total", {**ALERTMANAGER, "integration": "webhook"}, 2),
        ),
    ),
    AlertRule(
        "PlanflowPrometheusSelfScrapeFailed",
        "warning",
        "planflow-alerts",
        'up{job="prometheus"} == 0 or absent(up{job="prometheus"})',
        "Prometheus cannot scrape itself",
        "Prometheus at {{ $labels.instance }} fails to scrape its own metrics: the alerts about its "
        "rules and notifications are blind.",
        step_scenario("up", PROMETHEUS, 1, 0),
    ),
    AlertRule(
        "PlanflowPrometheusRuleFailures",
        "critical",
        "planflow-alerts",
        "increase(prometheus_rule_evaluation_failures_total[{{{rate_window}}}]) > 0",
        "Prometheus fails to evaluate rules of group {{ $labels.rule_group }}",
        "Rules of group {{ $labels.rule_group }} failed to evaluate in the last {{{rate_window}}}: "
        "their alerts may never fire.",
        _counter_scenario(
            "prometheus_rule_evaluation_failures_total", {**PROMETHEUS, "rule_group": "rules.yml;planflow"}
        ),
    ),
    AlertRule(
        "PlanflowPrometheusNotificationsFailing",
        "critical",
        "planflow-alerts",
        "rate(prometheus_notifications_errors_total[{{{rate_window}}}])\n"
        "  / rate(prometheus_notifications_sent_total[{{{rate_window}}}]) > {{{notification_failure_ratio}}}\n"
        "or prometheus_notifications_alertmanagers_discovered < 1",
        "Prometheus cannot send alerts to Alertmanager",
        "More than {{{notification_failure_ratio}}} of the alerts Prometheus sent to Alertmanager "
        "{{ $labels.alertmanager }} failed in the last {{{rate_window}}}, or it knows no Alertmanager.",
        _counter_scenario(
            "prometheus_notifications_errors_total",
            TO_ALERTMANAGER,
            ("prometheus_notifications_sent_total", TO_ALERTMANAGER, 1),
        ),
    ),
    AlertRule(
        "PlanflowPrometheusConfigReloadFailed",
        "warning",
        "planflow-alerts",
        "prometheus_config_last_reload_successful == 0",
        "Prometheus at {{ $labels.instance }} could not load its configuration",
        "Prometheus's last configuration reload failed: it runs with older rules and targets.",
        step_scenario("prometheus_config_last_reload_successful", PROMETHEUS, 1, 0),
    ),
    _down(
        "PlanflowPushgatewayDown",
        "warning",
        PUSHGATEWAY,
        "The Pushgateway",
        "Runs cannot push their figures (overrun and slip alerts are blind, remediation counts are "
        "lost); runs go on. Fix: `planflow stack up`.",
    ),
    _down(
        "PlanflowExporterDown",
        "critical",
        EXPORTER,
        "The planflow exporter",
        "Prefect's runs, pools and queues are not watched. Fix: `planflow stack up`.",
    ),
    AlertRule(
        "PlanflowPrefectApiDown",
        "critical",
        "planflow-alerts",
        "planflow_exporter_prefect_up == 0",
        "The Prefect API does not answer the exporter",
        "The planflow exporter at {{ $labels.instance }} cannot read the Prefect API: no run starts, "
        "no automation acts. The pool alerts it causes are inhibited meanwhile.",
        step_scenario("planflow_exporter_prefect_up", EXPORTER, 1, 0),
    ),
    _down(
        "PlanflowBridgeDown",
        "critical",
        BRIDGE,
        "The planflow alert bridge",
        "Alerts do not reach Prefect, so no automation reacts. Fix: `planflow stack up`.",
    ),
    AlertRule(
        "PlanflowBridgeSpoolBacklog",
        "warning",
        "planflow-alerts",
        "planflow_bridge_spool_depth > {{{bridge_spool_depth}}}",
        "The bridge holds many alerts it has not forwarded",
        "More than {{{bridge_spool_depth}}} alerts wait in the bridge's spool for the Prefect API.",
        step_scenario("planflow_bridge_spool_depth", BRIDGE, 0, 1000),
    ),
    AlertRule(
        "PlanflowBridgeDeliveryStalled",
        "critical",
        "planflow-alerts",
        "planflow_bridge_spool_oldest_age_seconds > {{{bridge_pending_max_age_seconds}}}",
        "An alert waits in the bridge for more than {{{bridge_pending_max_age}}}",
        "The oldest alert in the bridge's spool has waited more than {{{bridge_pending_max_age}}} "
        "to reach Prefect: no remediation acts on it.",
        step_scenario("planflow_bridge_spool_oldest_age_seconds", BRIDGE, 0, 100000),
    ),
    AlertRule(
        "PlanflowBridgeForwardFailing",
        "warning",
        "planflow-alerts",
        "rate(planflow_bridge_forward_failures_total[{{{rate_window}}}]) > 0",
        "The bridge fails to forward alerts to Prefect",
        "The bridge's attempts to send events to the Prefect API failed in the last {{{rate_window}}} "
        "(it retries; they stay in its spool).",
        _counter_scenario("planflow_bridge_forward_failures_total", BRIDGE),
    ),
    AlertRule(
        "PlanflowRemediationRunFailed",
        "warning",
        "planflow-alerts",
        f"{REMEDIATION_RUNS}{FAILED_RUN}\n"
        f"  - {REMEDIATION_RUNS}{FAILED_RUN} offset {{{{{{failure_window}}}}}} > 0\n"
        f"or {REMEDIATION_RUNS}{FAILED_RUN}\n"
        f"  unless {REMEDIATION_RUNS}{FAILED_RUN} offset {{{{{{failure_window}}}}}}",
        "Remediation flow {{ $labels.flow }} ended {{ $labels.state }}",
        "A run of remediation flow {{ $labels.flow }} ended "
        "{{ $labels.state }} within the last {{{failure_window}}}: the problem it answered is not healed.",
        _remediation_run_failed,
        for_zero=True,
    ),
    AlertRule(
        "PlanflowRemediationWorkerDown",
        "critical",
        "planflow-alerts",
        f'planflow_prefect_work_pool_status{{work_pool="{REMEDIATION_POOL}", status="not_ready"}} == 1',
        "No worker runs the remediations",
        f"Work pool {REMEDIATION_POOL} has no online worker: retries, failovers and rescales wait "
        "there and nothing heals until one is back.",
        step_scenario(
            "planflow_prefect_work_pool_status",
            {**EXPORTER, "work_pool": REMEDIATION_POOL, "type": "process", "status": "not_ready"},
            0,
            1,
        ),
    ),
    AlertRule(
        "PlanflowRemediationActionFailed",
        "warning",
        "planflow-alerts",
        'planflow_remediations_total{outcome="failed"}\n'
        '  - planflow_remediations_total{outcome="failed"} offset {{{failure_window}}} > 0\n'
        'or planflow_remediations_total{outcome="failed"}\n'
        '  unless planflow_remediations_total{outcome="failed"} offset {{{failure_window}}}',
        "A {{ $labels.action }} remediation failed",
        "At least one {{ $labels.action }} remediation reported outcome 'failed' in the last "
        "{{{failure_window}}}: the problem it answered is not healed.",
        _remediation_action_failed,
        for_zero=True,
    ),
]
