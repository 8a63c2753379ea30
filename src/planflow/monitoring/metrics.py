"""Every planflow metric (declared once, in metric_families.py, and importable from here
too), their catalog, and the recorder the run flow calls.

Why the Pushgateway for per-run figures: a pipeline run is short-lived and may run
anywhere (a process worker, a Docker container with host networking, a Kubernetes
pod on another machine). Prometheus pulls, and it cannot discover or reach such a
process before it exits. So a run pushes its figures to the Pushgateway, which
Prometheus scrapes with `honor_labels: true`. The grouping key is `job` +
`pipeline` (never a run id), so the gateway holds exactly one group per pipeline:
the latest run's figures, replaced (HTTP PUT) on every push. Consequences, by
design: values are "the latest run" gauges and per-run counters (a new run starts
them at zero again); two concurrent runs of one pipeline overwrite each other's
group. Long-lived processes (the exporter, the bridge) are scraped directly.

Each producer's metric families take their own `CollectorRegistry`, so tests read
values with `registry.get_sample_value(...)`:

>>> from prometheus_client import CollectorRegistry
>>> recorder = RunRecorder("fraud-risk", registry=CollectorRegistry())
>>> recorder.component("features", "local", "completed", 4.2, planned_seconds=3.0)
>>> recorder.registry.get_sample_value(
...     "planflow_component_duration_seconds_count",
...     {"pipeline": "fraud-risk", "component": "features", "pool": "local", "state": "completed"})
1.0
"""

from __future__ import annotations

import json
import logging
import time
from urllib.error import URLError

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import push_to_gateway

from planflow.monitoring.metric_families import (
    DURATION_BUCKETS,
    BridgeMetrics,
    ExporterMetrics,
    RemediationMetrics,
    RunMetrics,
)
from planflow.monitoring.serving_metrics import ServingMetrics
from planflow.settings import StatePaths, settings

__all__ = [
    "DURATION_BUCKETS",
    "PUSHGATEWAY_ENV",
    "PUSH_JOB",
    "BridgeMetrics",
    "ExporterMetrics",
    "RemediationMetrics",
    "RunMetrics",
    "RunRecorder",
    "metric_catalog",
    "pushgateway_url_from_env",
]

log = logging.getLogger(__name__)

PUSH_JOB = "planflow"
PUSHGATEWAY_ENV = "PLANFLOW_PUSHGATEWAY_URL"


def _norm(value: str | None) -> str:
    """Lower-case state names ("Failed", "FAILED" -> "failed") so label values stay few."""
    return (value or "unknown").strip().lower() or "unknown"


def metric_catalog() -> dict[str, str]:
    """Every planflow metric name as exposed (counters with `_total`, histograms with
    `_bucket`/`_sum`/`_count`) -> help text; for docs, dashboards and tests."""
    registry = CollectorRegistry()
    for cls in (RunMetrics, ExporterMetrics, BridgeMetrics, RemediationMetrics, ServingMetrics):
        cls(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    return {
        family.name + sfx: family.documentation
        for family in registry.collect()
        for sfx in suffixes.get(family.type, ("",))
    }


# -- where to push --------------------------------------------------------------------
def pushgateway_url_from_env() -> str | None:
    """PLANFLOW_PUSHGATEWAY_URL, else the url `planflow stack up` recorded, else None."""
    explicit = (settings().pushgateway_url or "").strip()
    if explicit:
        return explicit
    try:
        services = StatePaths.discover().home / "monitoring" / "services.json"
        return json.loads(services.read_text()).get("pushgateway_url") or None
    except (OSError, ValueError, AttributeError):
        return None


# -- the recorder the run flow calls --------------------------------------------------
class RunRecorder:
    """Records one pipeline run's figures and pushes them to the Pushgateway.

    No method raises because of monitoring: a failed push is logged as a warning and
    counted in `planflow_push_failures_total`. Without a Pushgateway url, recording
    is a few in-memory updates and `push()` returns at once.
    """

    def __init__(
        self,
        pipeline: str,
        pushgateway_url: str | None = None,
        registry: CollectorRegistry | None = None,
        push_timeout: float = 2.0,
    ) -> None:
        self.pipeline = pipeline
        self.pushgateway_url = pushgateway_url
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = RunMetrics(self.registry)
        self.push_timeout = push_timeout
        self._max_start_delay = 0.0

    def plan(
        self,
        makespan_seconds: float,
        lower_bound_seconds: float,
        gap: float,
        solve_seconds: float,
        status: str,
        solver: str,
    ) -> None:
        m, p = self.metrics, self.pipeline
        m.plan_makespan.labels(p).set(makespan_seconds)
        m.plan_lower_bound.labels(p).set(lower_bound_seconds)
        m.plan_gap.labels(p).set(gap)
        m.plan_solve.labels(p).set(solve_seconds)
        m.plan_info.clear()
        m.plan_info.labels(p, _norm(solver), _norm(status)).set(1)
        m.pipeline_planned_makespan.labels(p).set(makespan_seconds)
        m.pipeline_running.labels(p).set(1)
        m.pipeline_start_time.labels(p).set(time.time())
        m.pipeline_slip.labels(p).set(0)

    def pool_demand(self, pool: str, resource: str, demand: float, capacity: float) -> None:
        self.metrics.pool_demand.labels(self.pipeline, pool, resource).set(demand)
        self.metrics.pool_capacity.labels(self.pipeline, pool, resource).set(capacity)

    def component(
        self,
        component: str,
        pool: str,
        state: str,
        seconds: float | None,
        planned_seconds: float | None = None,
        start_delay_seconds: float | None = None,
    ) -> None:
        """Record a component's state change: "running" when it starts, a final state
        ("completed", "failed", "crashed", "retrying", ...) with its `seconds` when it ends."""
        m, key, state = self.metrics, (self.pipeline, component, pool), _norm(state)
        if planned_seconds is not None:
            m.component_planned.labels(*key).set(planned_seconds)
        if start_delay_seconds is not None:
            m.component_start_delay.labels(*key).set(start_delay_seconds)
            self._max_start_delay = max(self._max_start_delay, start_delay_seconds)
            m.pipeline_slip.labels(self.pipeline).set(self._max_start_delay)
        if state in ("running", "started"):
            m.component_running.labels(*key).set(1)
            m.component_start_time.labels(*key).set(time.time() - (seconds or 0.0))
            return
        m.component_running.labels(*key).set(0)
        if state == "retrying":
            m.component_failures.labels(*key).inc()
            m.component_retries.labels(*key).inc()
        elif state in ("failed", "crashed"):
            m.component_failures.labels(*key).inc()
        if seconds is not None:
            m.component_duration.labels(*key, state).observe(max(seconds, 0.0))
            m.component_last_duration.labels(*key).set(seconds)

    def component_usage(self, component: str, pool: str, peak_memory_bytes: float, cpu_seconds: float) -> None:
        """What a component measured in its own process used (runtime/isolation.py)."""
        key = (self.pipeline, component, pool)
        self.metrics.component_peak_memory.labels(*key).set(peak_memory_bytes)
        self.metrics.component_cpu.labels(*key).set(cpu_seconds)

    def memory(self, component: str, pool: str, peak_gib: float | None, oom_kills: int = 0) -> None:
        """A finished component's measured peak memory and its kills for memory."""
        key = (self.pipeline, component, pool)
        if peak_gib is not None:
            self.metrics.component_peak_memory.labels(*key).set(peak_gib * 2**30)
        if oom_kills:
            self.metrics.component_oom_kills.labels(*key).inc(oom_kills)

    def eta(self, unix_seconds: float) -> None:
        self.metrics.pipeline_eta.labels(self.pipeline).set(unix_seconds)

    def run_finished(self, state: str, makespan_seconds: float, planned_makespan_seconds: float | None) -> None:
        m, p, state = self.metrics, self.pipeline, _norm(state)
        m.pipeline_running.labels(p).set(0)
        m.pipeline_makespan.labels(p).set(makespan_seconds)
        if planned_makespan_seconds is not None:
            m.pipeline_planned_makespan.labels(p).set(planned_makespan_seconds)
            m.pipeline_slip.labels(p).set(makespan_seconds - planned_makespan_seconds)
        m.pipeline_finished.labels(p, state).inc()
        m.pipeline_last_finish.labels(p, state).set(time.time())
        for child_key in list(getattr(m.component_running, "_metrics", {})):
            m.component_running.labels(*child_key).set(0)

    def push(self) -> None:
        """Replace this pipeline's group on the Pushgateway with this run's figures."""
        if not self.pushgateway_url:
            return
        try:
            push_to_gateway(
                self.pushgateway_url,
                job=PUSH_JOB,
                registry=self.registry,
                grouping_key={"pipeline": self.pipeline},
                timeout=self.push_timeout,
            )
        except (OSError, URLError, ValueError) as exc:  # HTTPError is an OSError too
            self.metrics.push_failures.labels(self.pipeline).inc()
            log.warning(
                "planflow: could not push metrics of pipeline %r to %s: %s", self.pipeline, self.pushgateway_url, exc
            )
        except Exception as exc:  # never let monitoring fail a run
            self.metrics.push_failures.labels(self.pipeline).inc()
            log.warning("planflow: unexpected error pushing metrics of %r: %r", self.pipeline, exc)

    def exposition(self) -> bytes:
        """This run's figures in the Prometheus text format."""
        return generate_latest(self.registry)
