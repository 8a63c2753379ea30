"""The PromQL inside the dashboards: find it, fill in Grafana's variables, parse it,
and list the metric names it reads, against the metrics planflow really exposes.

>>> render('rate(x_total{pipeline=~"$pipeline"}[$__rate_interval])', {"pipeline": "fraud-risk"})
'rate(x_total{pipeline=~"fraud-risk"}[1m])'
>>> sorted(metric_names('sum(rate(a_total[1m])) / on() b or vector(0)'))
['a_total', 'b']
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml
from prometheus_client import CollectorRegistry

from planflow.monitoring import rules
from planflow.monitoring.bridge import create_app
from planflow.monitoring.exporter import Exporter
from planflow.monitoring.metrics import RemediationMetrics, RunMetrics
from planflow.monitoring.serving_metrics import ServingMetrics

PROMETHEUS_BUILTINS = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
# Grafana's own macros, replaced by durations that suit the fast test profile
# (1 s scrape): a window spans many samples; `$__range` is the dashboard's range.
MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
RULES_DIR = rules.HERE
_LABEL_VALUES = re.compile(r"^label_values\(\s*(?P<selector>.+?)\s*,\s*(?P<label>\w+)\s*\)$")


class QueryError(ValueError):
    """A dashboard query that does not parse or names an unknown metric."""


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str  # uid
    panel: str  # title (or the variable's name for a template variable)
    ref_id: str
    expr: str
    instant: bool = False

    @property
    def where(self) -> str:
        return f"{self.dashboard} / {self.panel!r} / {self.ref_id}"


def panels(model: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for panel in model.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def panel_queries(model: Mapping[str, Any]) -> list[PanelQuery]:
    """Every Prometheus query of every panel of one dashboard JSON model, and of its
    annotations (panel title `annotation: NAME`)."""
    found = [
        PanelQuery(
            model["uid"],
            panel.get("title", ""),
            target.get("refId", ""),
            target["expr"],
            bool(target.get("instant")) and not target.get("range"),
        )
        for panel in panels(model)
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    annotations = model.get("annotations", {}).get("list", [])
    return found + [
        PanelQuery(model["uid"], f"annotation: {a.get('name', '')}", "", a["expr"]) for a in annotations if "expr" in a
    ]


def variable_queries(model: Mapping[str, Any]) -> list[PanelQuery]:
    """The `label_values(selector, label)` queries of the template variables, as the
    selector each one runs (what Grafana sends to /api/v1/series or /label/.../values)."""
    found = []
    for var in model.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        match = _LABEL_VALUES.match(str(var.get("query", "")).strip())
        if not match:
            raise QueryError(
                f"{model['uid']}: variable ${var['name']}: expected label_values(metric, label), "
                f"got {var.get('query')!r}"
            )
        found.append(PanelQuery(model["uid"], f"${var['name']}", match["label"], match["selector"], True))
    return found


def variables(model: Mapping[str, Any]) -> list[str]:
    return [var["name"] for var in model.get("templating", {}).get("list", [])]


def render(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with Grafana's macros and the given template variables filled in."""
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    for name in sorted(values, key=len, reverse=True):  # $pool before $p
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


def parse(expr: str) -> Any:
    try:
        return promql_parser.parse(expr)
    except ValueError as exc:
        raise QueryError(f"does not parse as PromQL: {exc}: {expr}") from exc


def metric_names(expr: str) -> set[str]:
    """Metric names read by a PromQL expression (selector names and `__name__="..."`)."""
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__" and str(matcher.op).endswith("Equal") and "Not" not in str(matcher.op):
                    names.add(matcher.value)
        return True

    promql_parser.walk(parse(expr), visit)
    return names


# -- what planflow exposes --------------------------------------------------------------
def _exposed(registry: Any) -> set[str]:
    """Series names a registry exposes, whether or not a labelled child exists yet."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("_sum", "_count", ""),
        "info": ("_info",),
    }
    return {family.name + sfx for family in registry.collect() for sfx in suffixes.get(family.type, ("",))}


def recorded_metrics(rules_dir: Path = RULES_DIR) -> set[str]:
    """Names of the recording rules (`record:`) in monitoring/prometheus/rules*.yml."""
    names = set()
    for path in sorted(rules_dir.glob("rules*.yml")):
        if path.name.endswith(".test.yml"):
            continue
        document = yaml.safe_load(path.read_text()) or {}
        for group in document.get("groups", []):
            names.update(rule["record"] for rule in group.get("rules", []) if "record" in rule)
    return names


def known_metrics() -> dict[str, str]:
    """Every metric name a dashboard may read -> where it comes from: the run flow's
    metrics (pushed), the exporter's and the bridge's registries as those processes build
    them, the remediation counter, the recording rules, Prometheus' built-ins."""
    sources: dict[str, set[str]] = {}
    for label, cls in (
        ("run flow (Pushgateway)", RunMetrics),
        ("remediations", RemediationMetrics),
        ("planflow serve", ServingMetrics),
    ):
        registry = CollectorRegistry()
        cls(registry)
        sources[label] = _exposed(registry)
    registry = CollectorRegistry()
    Exporter(registry=registry, api_url="http://127.0.0.1:9/api")  # builds metrics, no I/O
    sources["exporter"] = _exposed(registry)
    registry = CollectorRegistry()
    with tempfile.TemporaryDirectory(prefix="planflow-grafana-") as folder:
        create_app(
            Path(folder) / "spool.sqlite",
            token="metric-catalog",
            registry=registry,
            prefect_api_url="http://127.0.0.1:9/api",
            forward=False,
        )
        sources["bridge"] = _exposed(registry)
    sources["recording rules"] = recorded_metrics()
    sources["prometheus"] = set(PROMETHEUS_BUILTINS)
    return {name: source for source, names in sources.items() for name in sorted(names)}


def check_dashboard(model: Mapping[str, Any], known: Mapping[str, str]) -> list[str]:
    """Every problem of one dashboard's queries: unparsable PromQL, unknown metrics."""
    values = {name: "x" for name in variables(model)}
    problems = []
    for query in [*panel_queries(model), *variable_queries(model)]:
        try:
            names = metric_names(render(query.expr, values))
        except QueryError as exc:
            problems.append(f"{query.where}: {exc}")
            continue
        if not names:
            problems.append(f"{query.where}: reads no metric: {query.expr}")
        for name in sorted(names - set(known)):
            problems.append(
                f"{query.where}: unknown metric {name!r} (not exposed by planflow, "
                f"not a recording rule, not a Prometheus built-in): {query.expr}"
            )
    return problems
