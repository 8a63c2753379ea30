"""The `planflow-alerts` dashboard: firing alerts, remediations, the bridge's delivery."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from planflow.dashboards.panels import GREEN_RED, PROMETHEUS, Layout, big, grid, new_dashboard, q, thresholds, ts


def alerts() -> db.Dashboard:
    d = new_dashboard(
        "alerts",
        "planflow / Alerts and remediations",
        "Which alerts fire, what the remediation flows did about them, and whether "
        "alerts reach Prefect (the bridge), plus the monitoring services' health.",
    )
    lay = Layout(d)
    lay.row("Alerts (Prometheus rules; Alertmanager routes them to the bridge)")
    lay.add(
        big(
            "Alerts firing",
            q('count(ALERTS{alertstate="firing", alertname=~"Planflow.*", alertname!="PlanflowWatchdog"})', "firing"),
            colors=GREEN_RED,
            no_value="0",
        ),
        6,
        7,
    )
    lay.add(
        grid(
            "Firing and pending alerts",
            q('ALERTS{alertname=~"Planflow.*", alertname!="PlanflowWatchdog"}', instant=True, table_format=True),
            hide=("Time", "__name__", "Value"),
            description="From Prometheus' ALERTS series. Silences and notification state are "
            "in Grafana's alerting view of the `planflow-alertmanager` datasource.",
        ),
        18,
        7,
    )
    lay.add(
        ts(
            "Alerts firing over time, by alert",
            q(
                'sum by (alertname) (ALERTS{alertstate="firing", alertname=~"Planflow.*", '
                'alertname!="PlanflowWatchdog"})',
                "{{alertname}}",
            ),
            stack=True,
        ),
        12,
        8,
    )
    lay.add(
        db.Panel()
        .type("alertlist")
        .title("Alert rules and their state (Prometheus ruler)")
        .datasource(PROMETHEUS)
        .options(
            {
                "viewMode": "list",
                "groupMode": "default",
                "groupBy": [],
                "maxItems": 20,
                "sortOrder": 1,
                "dashboardAlerts": False,
                "alertName": "Planflow",
                "alertInstanceLabelFilter": "",
                "datasource": "planflow-prometheus",
                "stateFilter": {"firing": True, "pending": True, "noData": False, "normal": False, "error": True},
            }
        ),
        12,
        8,
    )
    lay.row("Remediations (retry, failover, rescale)")
    lay.add(
        ts(
            "Remediations, by action and outcome",
            q(
                "sum by (action, outcome) (increase(planflow_remediations_total[$__rate_interval]))",
                "{{action}} {{outcome}}",
            ),
            stack=True,
            description="Empty until a remediation flow has run.",
        ),
        12,
        8,
    )
    lay.add(
        grid(
            "Remediations in the time range",
            q(
                "sum by (action, outcome) (increase(planflow_remediations_total[$__range]))",
                instant=True,
                table_format=True,
            ),
            description="Empty until a remediation flow has run.",
        ),
        12,
        8,
    )
    lay.add(
        ts(
            "Trigger -> remediation flow running (s), by action",
            q("max by (action) (planflow_remediation_alert_latency_seconds)", "{{action}}"),
            description="From the alert's Prefect event (or the failed run's) to its remediation "
            "flow running, last remediation of each action. Add ~4 s for threshold "
            "crossing -> event (fast profile; see bench/results/remediation.md).",
        ),
        24,
        7,
    )
    lay.row("Alert -> Prefect event delivery (the bridge)")
    lay.add(
        ts(
            "Alerts received and events forwarded",
            q(
                "sum by (status) (increase(planflow_bridge_alerts_received_total[$__rate_interval]))",
                "received {{status}}",
            ),
            q("sum(increase(planflow_bridge_events_forwarded_total[$__rate_interval]))", "events forwarded"),
            q("sum(increase(planflow_bridge_forward_failures_total[$__rate_interval]))", "forward failures"),
            q("sum(increase(planflow_bridge_alerts_duplicate_total[$__rate_interval]))", "duplicates dropped"),
        ),
        12,
        8,
    )
    lay.add(
        ts(
            "Delivery backlog: spool depth and oldest waiting alert",
            q("max(planflow_bridge_spool_depth)", "alerts waiting"),
            q("max(planflow_bridge_spool_oldest_age_seconds)", "oldest waiting (s)"),
            description="How long an alert waits before Prefect accepts its event: the "
            "alert -> event latency bound while Prefect is slow or down.",
        ),
        12,
        8,
    )
    lay.add(
        grid(
            "Webhook requests rejected, by reason",
            q("sum by (reason) (planflow_bridge_requests_rejected_total)", instant=True, table_format=True),
            description="Empty while no request was refused.",
        ),
        8,
        7,
    )
    lay.row("Monitoring health")
    lay.add(grid("Scrape targets up", q("up", instant=True, table_format=True), hide=("Time", "__name__")), 8, 7)
    lay.add(
        big(
            "Exporter reads Prefect",
            q("min(planflow_exporter_prefect_up)", "prefect api"),
            colors=thresholds((None, "red"), (1, "green")),
        ),
        4,
        7,
    )
    lay.add(
        ts(
            "Exporter poll",
            q("max(planflow_exporter_poll_duration_seconds)", "poll duration"),
            q("time() - max(planflow_exporter_last_success_timestamp_seconds)", "since last success"),
            unit="s",
        ),
        8,
        7,
    )
    lay.add(
        big(
            "Results folder",
            q("max(planflow_results_bytes)", "results"),
            unit="bytes",
            description="Size of the persisted component outputs (the results folder); `planflow results gc` "
            "bounds it.",
        ),
        4,
        7,
    )
    return d
