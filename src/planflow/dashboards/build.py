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

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from planflow.dashboards.alerts_dashboard import alerts
from planflow.dashboards.panels import ALERTMANAGER_UID, PROMETHEUS_UID, UIDS
from planflow.dashboards.pipelines_dashboard import pipelines
from planflow.dashboards.plan_dashboard import plan
from planflow.dashboards.pools_dashboard import pools

__all__ = ["ALERTMANAGER_UID", "PROMETHEUS_UID", "UIDS", "build_all", "to_dict"]

# Fields the SDK's Grafana 11.6 QueryVariable writes that belong to interval variables
# (`auto*`) or repeat a default (`allowCustomValue`); the dashboard schema forbids them.
_VARIABLE_NOISE = ("auto", "auto_count", "auto_min", "allowCustomValue")


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
