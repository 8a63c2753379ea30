"""The `planflow-pipelines` dashboard: runs, durations, failures, anomalies, serving."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from planflow.dashboards.panels import (
    GREEN_RED,
    PIPELINE,
    PROMETHEUS,
    Layout,
    bars,
    big,
    grid,
    lines,
    new_dashboard,
    of,
    q,
    thresholds,
    ts,
    variable,
)
from planflow.monitoring.thresholds import load as load_thresholds


# -- the dashboards ----------------------------------------------------------------------
def pipelines() -> db.Dashboard:
    d = new_dashboard(
        "pipelines",
        "planflow / Pipelines",
        "Flow runs by state, failures per flow, deployment and work pool (exporter), "
        "and each pipeline's latest run (Pushgateway).",
    )
    d.with_variable(variable("pipeline", "Pipeline", "planflow_pipeline_start_timestamp_seconds"))
    flows = f'flow=~"{PIPELINE}"'
    sel = f'pipeline=~"{PIPELINE}"'
    lay = Layout(d)
    lay.row("Flow runs on the Prefect server (exporter)")
    lay.add(
        big(
            "Flow runs in progress, by state",
            q(f"sum by (state) (planflow_prefect_flow_runs{{{flows}}})", "{{state}}"),
            description="Runs in a non-terminal state (scheduled, pending, running, paused, "
            "cancelling). Empty while nothing is in progress.",
            no_value="0",
        ),
        8,
        6,
    )
    lay.add(
        ts(
            "Flow runs finished, by state",
            q(
                f"sum by (state) (increase(planflow_prefect_flow_runs_finished_total{{{flows}}}[$__rate_interval]))",
                "{{state}}",
            ),
            stack=True,
            description="Runs reaching a terminal state per interval, as the exporter saw them.",
        ),
        16,
        6,
    )
    lay.add(
        grid(
            "Failed and crashed runs by flow, deployment and work pool",
            q(
                "sum by (flow, deployment, work_pool, state) "
                f'(planflow_prefect_flow_runs_finished_total{{{flows}, state=~"failed|crashed"}})',
                instant=True,
                table_format=True,
            ),
            description="Counted since the exporter started. Empty while nothing failed.",
        ),
        16,
        7,
    )
    lay.add(
        big(
            "Last failure, seconds ago",
            q(
                f"time() - max by (flow) (planflow_prefect_flow_run_last_failure_timestamp_seconds{{{flows}}})",
                "{{flow}}",
            ),
            unit="s",
            description="Since the latest failed or crashed run ended. Empty while nothing failed.",
        ),
        8,
        7,
    )
    lay.row("Latest run of each pipeline (pushed by the run flow)")
    lay.add(
        big(
            "Running now",
            of("planflow_pipeline_running", sel, "{{pipeline}}"),
            description="1 while the pipeline's latest run runs.",
        ),
        6,
        6,
    )
    lay.add(
        grid(
            "Latest run result",
            q(f'planflow_pipeline_runs_finished_total{{pipeline=~"{PIPELINE}"}}', instant=True, table_format=True),
            q(
                f'planflow_pipeline_last_finish_timestamp_seconds{{pipeline=~"{PIPELINE}"}} * 1000',
                instant=True,
                table_format=True,
            ),
            hide=("Time", "job", "instance", "__name__"),
            description="Final state of the latest run (Value #A = 1) and when it finished "
            "(Value #B, ms since the epoch).",
        ),
        18,
        6,
    )
    lay.add(
        lines(
            "Makespan, planned vs actual",
            sel,
            "{{pipeline}}",
            ("planflow_pipeline_planned_makespan_seconds", "planned"),
            ("planflow_pipeline_makespan_seconds", "actual"),
            unit="s",
        ),
        12,
        8,
    )
    lay.add(
        bars(
            "Component duration in the latest run",
            of(
                "planflow_component_last_duration_seconds", sel, "{{pipeline}} / {{component}} ({{pool}})", instant=True
            ),
            unit="s",
        ),
        12,
        8,
    )
    lay.add(
        bars(
            "Mean component attempt duration, by final state",
            q(
                "sum by (pipeline, component, state) "
                f'(planflow_component_duration_seconds_sum{{pipeline=~"{PIPELINE}"}})'
                " / sum by (pipeline, component, state) "
                f'(planflow_component_duration_seconds_count{{pipeline=~"{PIPELINE}"}})',
                "{{pipeline}} / {{component}} {{state}}",
                instant=True,
            ),
            unit="s",
            description="From the duration histogram of the latest run: retried attempts count separately.",
        ),
        12,
        8,
    )
    lay.add(
        ts(
            "Component failures and retries (latest run)",
            q(
                f'sum by (pipeline, component) (planflow_component_failures_total{{pipeline=~"{PIPELINE}"}})',
                "{{pipeline}} / {{component}} failures",
            ),
            q(
                f'sum by (pipeline, component) (planflow_component_retries_total{{pipeline=~"{PIPELINE}"}})',
                "{{pipeline}} / {{component}} retries",
            ),
            description="Empty while no component of the latest run failed.",
        ),
        12,
        8,
    )
    _anomalies(d, lay)
    serving_row(lay)
    return d


ANOMALY_ALERTS = "PlanflowComponentDurationAnomaly|PlanflowPipelineFailureRateAnomaly"


def _anomalies(d: db.Dashboard, lay: Layout) -> None:
    """The anomaly rules' view (monitoring/anomaly.py): each component's duration against
    its learned baseline band, each pipeline's failed share against its history, and the
    anomaly alerts as annotations on every panel."""
    spreads = load_thresholds()["thresholds"]["anomaly_spreads"]
    median, spread = (
        "planflow:component_duration_seconds:baseline_median",
        "planflow:component_duration_seconds:baseline_spread",
    )
    at = f'{{pipeline=~"{PIPELINE}"}}'
    d.annotation(
        db.AnnotationQuery()
        .name("Anomalies")
        .datasource(PROMETHEUS)
        .enable(True)
        .icon_color("orange")
        .expr(f'ALERTS{{alertname=~"{ANOMALY_ALERTS}", alertstate="firing"}}')
    )
    lay.row("Anomalies (against each component's and pipeline's own history)")
    lay.add(
        ts(
            "Component duration against its baseline",
            q(f"planflow_component_last_duration_seconds{at}", "{{component}} ({{pool}}) latest"),
            q(f"{median}{at}", "{{component}} ({{pool}}) median"),
            q(f"{median}{at} + {spreads:g} * {spread}{at}", "{{component}} ({{pool}}) alert line"),
            unit="s",
            description=f"Latest duration, the baseline median and median + {spreads:g} spreads: "
            "PlanflowComponentDurationAnomaly fires when the latest duration stays above the alert line "
            "for several runs in a row (monitoring/RUNBOOK.md). Empty until a baseline holds enough runs.",
        ),
        12,
        8,
    )
    lay.add(
        lines(
            "Failed share of runs, recent against usual",
            f'flow=~"{PIPELINE}"',
            "{{flow}}",
            ("planflow:pipeline_failure_ratio:recent", "recent"),
            ("planflow:pipeline_failure_ratio:baseline", "usual"),
            unit="percentunit",
            description="Failed or crashed / finished runs over the failure-rate window, and over the "
            "baseline window before it (PlanflowPipelineFailureRateAnomaly).",
        ),
        12,
        8,
    )


# replicas ready: none is an outage, one is no redundancy
REPLICAS = thresholds((None, "red"), (1, "orange"), (2, "green"))


def serving_row(lay: Layout) -> None:
    """`planflow serve`: latency against its SLO, requests and errors, the model in use."""
    served = f'pipeline=~"{PIPELINE}"'
    lay.row("Online serving (planflow serve: the replicas' /metrics)")
    lay.add(
        ts(
            "/predict latency p50 / p99",
            *(
                q(
                    f"histogram_quantile({quantile}, sum by (pipeline, le) "
                    f"(rate(planflow_serving_request_duration_seconds_bucket{{{served}}}[1m])))",
                    f"{{{{pipeline}}}} p{round(quantile * 100)}",
                )
                for quantile in (0.5, 0.99)
            ),
            unit="s",
            description="Alert PlanflowServingLatencyHigh fires over the p99 SLO (thresholds.yml).",
        ),
        8,
        8,
    )
    lay.add(
        ts(
            "Requests and errors per second",
            q(f"sum by (pipeline) (rate(planflow_serving_requests_total{{{served}}}[1m]))", "{{pipeline}} requests"),
            q(
                f"sum by (pipeline, reason) (rate(planflow_serving_errors_total{{{served}}}[1m]))",
                "{{pipeline}} {{reason}}",
            ),
            unit="reqps",
        ),
        8,
        8,
    )
    lay.add(
        big(
            "Replicas with a model",
            q(f"sum by (pipeline) (planflow_serving_model_loaded{{{served}}})", "{{pipeline}}"),
            description="0: not ready (alert PlanflowServingNoModel).",
            colors=REPLICAS,
            no_value="not serving",
        ),
        4,
        4,
    )
    lay.add(
        big(
            "Replicas up",
            q('sum(up{job="planflow-serving"})'),
            colors=REPLICAS,
            no_value="not scraped",
        ),
        4,
        4,
    )
    lay.add(
        big(
            "Model version (its run ended)",
            q(
                f"max by (pipeline) (planflow_serving_model_run_end_timestamp_seconds{{{served}}}) * 1000",
                "{{pipeline}}",
            ),
            unit="dateTimeFromNow",
            description="When the training run whose outputs are served ended; it moves on at each swap.",
        ),
        4,
        4,
    )
    lay.add(
        big(
            "Model loads failing",
            q(f"max by (pipeline) (planflow_serving_model_load_failing{{{served}}})", "{{pipeline}}"),
            colors=GREEN_RED,
            description="1: the newest run cannot be read; the previous model is still served.",
        ),
        4,
        4,
    )
