"""Building blocks of planflow's dashboards: queries, panels, layout, the dashboard shell."""

from __future__ import annotations

from typing import Any, TypeVar

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

PROMETHEUS_UID = "planflow-prometheus"
ALERTMANAGER_UID = "planflow-alertmanager"
PROMETHEUS = dm.DataSourceRef(type_val="prometheus", uid=PROMETHEUS_UID)
TAGS = ["planflow"]
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


def of(metric: str, selector: str, legend: str = "", instant: bool = False) -> prometheus.Dataquery:
    """A query of `metric` under `selector`, e.g. of("planflow_pipeline_running", 'pipeline=~"$pipeline"')."""
    return q(f"{metric}{{{selector}}}", legend, instant=instant)


Panel = TypeVar("Panel", timeseries.Panel, stat.Panel, bargauge.Panel, table.Panel)


def _shell(panel: Panel, title: str, unit: str) -> Panel:
    return panel.title(title).datasource(PROMETHEUS).unit(unit)


def _with_queries(panel: Panel, description: str, queries: tuple[prometheus.Dataquery, ...]) -> Panel:
    if description:
        panel = panel.description(description)
    for query in queries:
        panel = panel.with_target(query)
    return panel


def _last_value() -> cb.ReduceDataOptions:
    return cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def ts(
    title: str, *queries: prometheus.Dataquery, unit: str = "short", description: str = "", stack: bool = False
) -> timeseries.Panel:
    panel = (
        _shell(timeseries.Panel(), title, unit)
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
    return _with_queries(panel, description, queries)


def lines(
    title: str, selector: str, legend: str, *series: tuple[str, str], unit: str = "short", description: str = ""
) -> timeseries.Panel:
    """A timeseries of several metrics under one selector: each (metric, label) of
    `series` a line whose legend is `legend` and its label."""
    queries = [of(metric, selector, f"{legend} {label}") for metric, label in series]
    return ts(title, *queries, unit=unit, description=description)


def big(
    title: str,
    *queries: prometheus.Dataquery,
    unit: str = "short",
    description: str = "",
    colors: db.ThresholdsConfig = GREEN,
    no_value: str = "",
) -> stat.Panel:
    panel = (
        _shell(stat.Panel(), title, unit)
        .thresholds(colors)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(_last_value())
    )
    if no_value:
        panel = panel.no_value(no_value)
    return _with_queries(panel, description, queries)


def bars(
    title: str,
    *queries: prometheus.Dataquery,
    unit: str = "short",
    description: str = "",
    colors: db.ThresholdsConfig = GREEN,
) -> bargauge.Panel:
    panel = (
        _shell(bargauge.Panel(), title, unit)
        .thresholds(colors)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .orientation(common.VizOrientation.HORIZONTAL)
        .reduce_options(_last_value())
    )
    return _with_queries(panel, description, queries)


def grid(
    title: str,
    *queries: prometheus.Dataquery,
    description: str = "",
    unit: str = "short",
    hide: tuple[str, ...] = ("Time",),
) -> table.Panel:
    """A table of instant queries, one row per series, label columns first."""
    panel = _with_queries(
        _shell(table.Panel(), title, unit).cell_height(common.TableCellHeight.SM), description, queries
    )
    panel = panel.with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
    panel = panel.with_transformation(
        dm.DataTransformerConfig(id_val="organize", options={"excludeByName": {name: True for name in hide}})
    )
    return panel


def table_of(
    title: str, selector: str, *metrics: str, hide: tuple[str, ...], unit: str = "short", description: str = ""
) -> table.Panel:
    """A table of `metrics` under one selector, each an instant query in table format."""
    queries = [q(f"{metric}{{{selector}}}", instant=True, table_format=True) for metric in metrics]
    return grid(title, *queries, hide=hide, unit=unit, description=description)


def per_resource(
    lay: Layout, title: str, selector: str, resources: tuple[tuple[str, str], ...], *series: tuple[str, str]
) -> None:
    """One timeseries per (resource, unit) of `resources`, 8 wide and 8 high, titled
    `title` after the resource: each (metric, label) of `series` as a line per pool."""
    for resource, unit in resources:
        queries = [
            q(f'max by (pool) ({metric}{{{selector}, resource="{resource}"}})', f"{{{{pool}}}} {label}")
            for metric, label in series
        ]
        lay.add(ts(f"{resource}: {title}", *queries, unit=unit), 8, 8)


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
