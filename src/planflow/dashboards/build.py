"""planflow's Grafana dashboards, as code (Grafana Foundation SDK, Grafana 11 line).

Four dashboards with fixed uids, the ones the alert rules link to
(monitoring/prometheus/thresholds.yml -> `dashboard` annotations):

- `planflow-pipelines`  runs by state, durations, failures per flow/deployment/pool
- `planflow-plan`       plan vs actual: makespan planned and achieved, slip, bound, gap
- `planflow-pools`      capacity vs planned demand, reserved vs used vs capacity across
                        runs (the pool calendar and shared slots), queues, late runs, workers
- `planflow-alerts`     firing alerts, remediations, the alert bridge's delivery

Every query reads the provisioned Prometheus datasource (uid `planflow-prometheus`,
see grafana/provisioning/datasources/planflow.yaml) and names only metrics declared
in monitoring/metrics.py or Prometheus built-ins (`up`, `ALERTS`); tests check both.
`planflow grafana generate` writes the JSON under the project's grafana/dashboards/.

>>> sorted(build_all())
['planflow-alerts', 'planflow-pipelines', 'planflow-plan', 'planflow-pools']
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from planflow.monitoring.thresholds import load as load_thresholds

PROMETHEUS_UID = "planflow-prometheus"
ALERTMANAGER_UID = "planflow-alertmanager"
PROMETHEUS = dm.DataSourceRef(type_val="prometheus", uid=PROMETHEUS_UID)
TAGS = ["planflow"]
# Fields the SDK's Grafana 11.6 QueryVariable writes that belong to interval variables
# (`auto*`) or repeat a default (`allowCustomValue`); the dashboard schema forbids them.
_VARIABLE_NOISE = ("auto", "auto_count", "auto_min", "allowCustomValue")

UIDS = {
    "pipelines": "planflow-pipelines",
    "plan": "planflow-plan",
    "pools": "planflow-pools",
    "alerts": "planflow-alerts",
}

PIPELINE = "$pipeline"
POOL = "$pool"
WORK_POOL = "$work_pool"


# -- building blocks -------------------------------------------------------------------
def q(expr: str, legend: str = "", instant: bool = False, table_format: bool = False) -> prometheus.Dataquery:
    """A Prometheus query of a panel (refIds are set by `Layout.add`)."""
    query = prometheus.Dataquery().expr(expr).datasource(PROMETHEUS)
    if legend:
        query = query.legend_format(legend)
    if instant:
        query = query.instant()
    else:
        query = query.range()
    if table_format:
        query = query.format(pm.PromQueryFormat.TABLE)
    return query


def variable(name: str, label: str, metric: str, label_name: str | None = None) -> db.QueryVariable:
    """A multi-value template variable filled by `label_values(metric, label)`;
    "All" matches every value (regex `.*`) so that `=~"$var"` filters keep working."""
    return (
        db.QueryVariable(name)
        .label(label)
        .datasource(PROMETHEUS)
        .query(f"label_values({metric}, {label_name or name})")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(text="All", value="$__all", selected=True))
    )


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=value, color=color) for value, color in steps])
    )


GREEN = thresholds((None, "green"))
GREEN_RED = thresholds((None, "green"), (1, "red"))


def ts(
    title: str, *queries: prometheus.Dataquery, unit: str = "short", description: str = "", stack: bool = False
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(PROMETHEUS)
        .unit(unit)
        .line_width(2)
        .fill_opacity(10)
        .span_nulls(True)
        .legend(
            cb.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
    )
    if stack:
        panel = panel.stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL))
    if description:
        panel = panel.description(description)
    for query in queries:
        panel = panel.with_target(query)
    return panel


def big(
    title: str,
    *queries: prometheus.Dataquery,
    unit: str = "short",
    description: str = "",
    colors: db.ThresholdsConfig = GREEN,
    no_value: str = "",
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .datasource(PROMETHEUS)
        .unit(unit)
        .thresholds(colors)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if description:
        panel = panel.description(description)
    if no_value:
        panel = panel.no_value(no_value)
    for query in queries:
        panel = panel.with_target(query)
    return panel


def bars(
    title: str,
    *queries: prometheus.Dataquery,
    unit: str = "short",
    description: str = "",
    colors: db.ThresholdsConfig = GREEN,
) -> bargauge.Panel:
    panel = (
        bargauge.Panel()
        .title(title)
        .datasource(PROMETHEUS)
        .unit(unit)
        .thresholds(colors)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .orientation(common.VizOrientation.HORIZONTAL)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if description:
        panel = panel.description(description)
    for query in queries:
        panel = panel.with_target(query)
    return panel


def grid(
    title: str,
    *queries: prometheus.Dataquery,
    description: str = "",
    unit: str = "short",
    hide: tuple[str, ...] = ("Time",),
) -> table.Panel:
    """A table of instant queries, one row per series, label columns first."""
    panel = table.Panel().title(title).datasource(PROMETHEUS).unit(unit).cell_height(common.TableCellHeight.SM)
    if description:
        panel = panel.description(description)
    for query in queries:
        panel = panel.with_target(query)
    panel = panel.with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
    panel = panel.with_transformation(
        dm.DataTransformerConfig(id_val="organize", options={"excludeByName": {name: True for name in hide}})
    )
    return panel


def text(title: str, markdown: str) -> db.Panel:
    return db.Panel().type("text").title(title).options({"mode": "markdown", "content": markdown})


class Layout:
    """Places panels left to right on Grafana's 24-column grid, row by row, and numbers
    panels and refIds so that the generated JSON is stable."""

    def __init__(self, dashboard: db.Dashboard) -> None:
        self.dashboard = dashboard
        self.x = self.y = self.row_height = 0
        self.next_id = 1

    def _wrap(self) -> None:
        if self.x:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0

    def row(self, title: str) -> Layout:
        self._wrap()
        self.dashboard.with_row(db.Row(title).id(self.next_id).grid_pos(dm.GridPos(h=1, w=24, x=0, y=self.y)))
        self.next_id += 1
        self.y += 1
        return self

    def add(self, panel: Any, w: int, h: int) -> Layout:
        if self.x + w > 24:
            self._wrap()
        built = panel._internal
        for index, target in enumerate(built.targets or []):
            target.ref_id = chr(ord("A") + index)
        panel.id(self.next_id).grid_pos(dm.GridPos(h=h, w=w, x=self.x, y=self.y))
        self.dashboard.with_panel(panel)
        self.next_id += 1
        self.x += w
        self.row_height = max(self.row_height, h)
        return self


def new_dashboard(key: str, title: str, description: str) -> db.Dashboard:
    others = [
        db.DashboardLink("planflow")
        .type(dm.DashboardLinkType.DASHBOARDS)
        .tags(TAGS)
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
        .icon("external link")
        .tooltip("the other planflow dashboards")
        .target_blank(False)
    ]
    return (
        db.Dashboard(title)
        .uid(UIDS[key])
        .description(description)
        .tags(TAGS)
        .timezone("browser")
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .links(others)
    )


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
            q(f'planflow_pipeline_running{{pipeline=~"{PIPELINE}"}}', "{{pipeline}}"),
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
        ts(
            "Makespan, planned vs actual",
            q(f'planflow_pipeline_planned_makespan_seconds{{pipeline=~"{PIPELINE}"}}', "{{pipeline}} planned"),
            q(f'planflow_pipeline_makespan_seconds{{pipeline=~"{PIPELINE}"}}', "{{pipeline}} actual"),
            unit="s",
        ),
        12,
        8,
    )
    lay.add(
        bars(
            "Component duration in the latest run",
            q(
                f'planflow_component_last_duration_seconds{{pipeline=~"{PIPELINE}"}}',
                "{{pipeline}} / {{component}} ({{pool}})",
                instant=True,
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
        ts(
            "Failed share of runs, recent against usual",
            q(f'planflow:pipeline_failure_ratio:recent{{flow=~"{PIPELINE}"}}', "{{flow}} recent"),
            q(f'planflow:pipeline_failure_ratio:baseline{{flow=~"{PIPELINE}"}}', "{{flow}} usual"),
            unit="percentunit",
            description="Failed or crashed / finished runs over the failure-rate window, and over the "
            "baseline window before it (PlanflowPipelineFailureRateAnomaly).",
        ),
        12,
        8,
    )


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
            colors=thresholds((None, "red"), (1, "orange"), (2, "green")),
            no_value="not serving",
        ),
        4,
        4,
    )
    lay.add(
        big(
            "Replicas up",
            q('sum(up{job="planflow-serving"})'),
            colors=thresholds((None, "red"), (1, "orange"), (2, "green")),
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


def plan() -> db.Dashboard:
    d = new_dashboard(
        "plan",
        "planflow / Plan vs actual",
        "What the planner promised and what the run did: makespan planned and "
        "achieved, slip per component, the plan's lower bound, gap and solve time.",
    )
    d.with_variable(variable("pipeline", "Pipeline", "planflow_plan_makespan_seconds"))
    sel = f'pipeline=~"{PIPELINE}"'
    lay = Layout(d)
    lay.row("The latest plan and run")
    lay.add(big("Planned makespan", q(f"planflow_plan_makespan_seconds{{{sel}}}", "{{pipeline}}"), unit="s"), 4, 5)
    lay.add(big("Achieved makespan", q(f"planflow_pipeline_makespan_seconds{{{sel}}}", "{{pipeline}}"), unit="s"), 4, 5)
    lay.add(
        big(
            "Slip (actual - planned)",
            q(f"planflow_pipeline_slip_seconds{{{sel}}}", "{{pipeline}}"),
            unit="s",
            colors=thresholds((None, "green"), (1, "orange"), (30, "red")),
            description="While running: the largest component start delay; once finished: "
            "actual minus planned makespan.",
        ),
        4,
        5,
    )
    lay.add(
        big(
            "Lower bound",
            q(f"planflow_plan_lower_bound_seconds{{{sel}}}", "{{pipeline}}"),
            unit="s",
            description="Proven lower bound on the makespan.",
        ),
        4,
        5,
    )
    lay.add(
        big(
            "Optimality gap",
            q(f"planflow_plan_gap_ratio{{{sel}}}", "{{pipeline}}"),
            unit="percentunit",
            colors=thresholds((None, "green"), (0.05, "orange"), (0.2, "red")),
        ),
        4,
        5,
    )
    lay.add(big("Solve time", q(f"planflow_plan_solve_duration_seconds{{{sel}}}", "{{pipeline}}"), unit="s"), 4, 5)
    lay.add(
        ts(
            "Makespan: planned, achieved and lower bound",
            q(f"planflow_plan_makespan_seconds{{{sel}}}", "{{pipeline}} planned"),
            q(f"planflow_pipeline_makespan_seconds{{{sel}}}", "{{pipeline}} achieved"),
            q(f"planflow_plan_lower_bound_seconds{{{sel}}}", "{{pipeline}} lower bound"),
            unit="s",
        ),
        12,
        8,
    )
    lay.add(
        ts(
            "Solver: gap and solve time",
            q(f"planflow_plan_gap_ratio{{{sel}}}", "{{pipeline}} gap"),
            q(f"planflow_plan_solve_duration_seconds{{{sel}}}", "{{pipeline}} solve seconds"),
            description="Gap is a ratio (0 = proven optimal); solve time in seconds.",
        ),
        12,
        8,
    )
    lay.row("Per component")
    lay.add(
        bars(
            "Start delay per component (positive = late)",
            q(f"planflow_component_start_delay_seconds{{{sel}}}", "{{pipeline}} / {{component}}", instant=True),
            unit="s",
            colors=thresholds((None, "green"), (1, "orange"), (10, "red")),
        ),
        12,
        9,
    )
    lay.add(
        bars(
            "Actual / planned duration per component",
            q(
                f"planflow_component_last_duration_seconds{{{sel}}}"
                f" / (planflow_component_planned_duration_seconds{{{sel}}} > 0)",
                "{{pipeline}} / {{component}}",
                instant=True,
            ),
            unit="none",
            colors=thresholds((None, "green"), (1.2, "orange"), (2, "red")),
            description="Above 2 the PlanflowComponentOverrun alert fires.",
        ),
        12,
        9,
    )
    lay.add(
        grid(
            "Planned and actual duration per component",
            q(f"planflow_component_planned_duration_seconds{{{sel}}}", instant=True, table_format=True),
            q(f"planflow_component_last_duration_seconds{{{sel}}}", instant=True, table_format=True),
            q(f"planflow_component_start_delay_seconds{{{sel}}}", instant=True, table_format=True),
            hide=("Time", "job", "instance"),
            unit="s",
            description="Value #A planned, #B actual, #C start delay (seconds).",
        ),
        16,
        9,
    )
    lay.add(
        grid(
            "Solver and status",
            q(f"planflow_plan_info{{{sel}}}", instant=True, table_format=True),
            hide=("Time", "job", "instance", "__name__", "Value"),
        ),
        8,
        9,
    )
    return d


def pools() -> db.Dashboard:
    d = new_dashboard(
        "pools",
        "planflow / Resource pools",
        "Planned demand against capacity per resource pool; the Prefect work pools' queues, late runs and workers.",
    )
    d.with_variable(variable("pool", "Resource pool", "planflow_pool_capacity"))
    d.with_variable(variable("work_pool", "Work pool", "planflow_prefect_work_pool_status"))
    sel = f'pool=~"{POOL}"'
    wp = f'work_pool=~"{WORK_POOL}"'
    lay = Layout(d)
    lay.row("Capacity vs planned demand (the planner's view, latest plan per pipeline)")
    for resource, unit in (("cpu", "short"), ("gpu", "short"), ("memory_bytes", "bytes")):
        lay.add(
            ts(
                f"{resource}: capacity vs planned peak demand",
                q(f'max by (pool) (planflow_pool_capacity{{{sel}, resource="{resource}"}})', "{{pool}} capacity"),
                q(
                    f'max by (pool) (planflow_pool_planned_peak_demand{{{sel}, resource="{resource}"}})',
                    "{{pool}} planned peak",
                ),
                unit=unit,
            ),
            8,
            8,
        )
    lay.add(
        bars(
            "Planned peak utilisation",
            q(
                f"max by (pool, resource) (planflow_pool_planned_peak_demand{{{sel}}})"
                f" / max by (pool, resource) (planflow_pool_capacity{{{sel}}} > 0)",
                "{{pool}} {{resource}}",
                instant=True,
            ),
            unit="percentunit",
            colors=thresholds((None, "green"), (0.8, "orange"), (1, "red")),
            description="Largest planned demand over capacity, across pipelines' latest plans.",
        ),
        12,
        8,
    )
    lay.add(
        ts(
            "Components running, per pool",
            q(f"sum by (pool) (planflow_component_running{{{sel}}})", "{{pool}}"),
            stack=True,
        ),
        12,
        8,
    )
    lay.row("Shared pools across runs: reserved (pool calendar) vs used (slots held) vs capacity")
    for resource, unit in (("cpu", "short"), ("gpu", "short"), ("mem_gib", "short")):
        lay.add(
            ts(
                f"{resource}: reserved vs used vs capacity",
                q(f'max by (pool) (planflow_pool_slots_capacity{{{sel}, resource="{resource}"}})', "{{pool}} capacity"),
                q(
                    f'max by (pool) (planflow_pool_calendar_reserved{{{sel}, resource="{resource}"}})',
                    "{{pool}} reserved (calendar)",
                ),
                q(
                    f'max by (pool) (planflow_pool_slots_held{{{sel}, resource="{resource}"}})',
                    "{{pool}} used (slots held)",
                ),
                unit=unit,
            ),
            8,
            8,
        )
    lay.add(
        ts(
            "Runs waiting in the pool calendar",
            q(f"max by (pool) (planflow_pool_calendar_waiting_runs{{{sel}}})", "{{pool}}"),
        ),
        24,
        6,
    )
    lay.row("Prefect work pools (exporter)")
    lay.add(
        grid(
            "Work pool status",
            q(f"planflow_prefect_work_pool_status{{{wp}}} == 1", instant=True, table_format=True),
            hide=("Time", "job", "instance", "__name__", "Value"),
            description="ready, not_ready (no online worker) or paused.",
        ),
        8,
        7,
    )
    lay.add(
        ts(
            "Workers, by status",
            q(f"sum by (work_pool, status) (planflow_prefect_workers{{{wp}}})", "{{work_pool}} {{status}}"),
        ),
        8,
        7,
    )
    lay.add(
        ts(
            "Freshest worker heartbeat age",
            q(f"planflow_prefect_worker_heartbeat_age_seconds{{{wp}}}", "{{work_pool}}"),
            unit="s",
            description="Empty for a pool that never had a worker.",
        ),
        8,
        7,
    )
    lay.add(
        ts(
            "Queue depth (scheduled due, late or pending runs)",
            q(
                f"sum by (work_pool, work_queue) (planflow_prefect_work_queue_depth{{{wp}}})",
                "{{work_pool}} / {{work_queue}}",
            ),
        ),
        8,
        8,
    )
    lay.add(
        ts(
            "Late runs",
            q(f"sum by (work_pool, work_queue) (planflow_prefect_late_runs{{{wp}}})", "{{work_pool}} / {{work_queue}}"),
            description="Scheduled runs past their start time; PlanflowLateRunBacklog fires at 1.",
        ),
        8,
        8,
    )
    lay.add(
        ts(
            "Failed or crashed share of finished runs",
            q(
                "sum by (work_pool) "
                f'(increase(planflow_prefect_flow_runs_finished_total{{{wp}, state=~"failed|crashed"}}[$__range]))'
                f" / sum by (work_pool) (increase(planflow_prefect_flow_runs_finished_total{{{wp}}}[$__range]))",
                "{{work_pool}}",
            ),
            unit="percentunit",
            description="Over the dashboard's time range. PlanflowPoolFailureRateHigh uses the same ratio.",
        ),
        8,
        8,
    )
    lay.add(
        grid(
            "Work queues ready",
            q(f"planflow_prefect_work_queue_ready{{{wp}}}", instant=True, table_format=True),
            hide=("Time", "job", "instance", "__name__"),
            description="Value 1 when the queue is READY.",
        ),
        24,
        6,
    )
    return d


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
        12,
        7,
    )
    return d


BUILDERS: dict[str, Callable[[], db.Dashboard]] = {
    UIDS["pipelines"]: pipelines,
    UIDS["plan"]: plan,
    UIDS["pools"]: pools,
    UIDS["alerts"]: alerts,
}


def to_dict(dashboard: db.Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (plain dict, stable key order)."""
    model = json.loads(json.dumps(dashboard.build(), cls=JSONEncoder, sort_keys=True))
    for var in model.get("templating", {}).get("list", []):
        for key in _VARIABLE_NOISE:
            var.pop(key, None)
    return model


def build_all() -> dict[str, dict[str, Any]]:
    """uid -> dashboard JSON model, for every planflow dashboard."""
    return {uid: to_dict(build()) for uid, build in BUILDERS.items()}
