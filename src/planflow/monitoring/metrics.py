"""Every planflow metric, declared once, and the recorder the run flow calls.

Naming follows Prometheus' rules: the `planflow_` prefix, base units (`_seconds`,
`_bytes`, ratios as plain numbers), `_total` on counters, and a few bounded labels
(pipeline, component, pool, state, resource...). Run ids never become labels: one
series per run would grow without bound; a run is named in Prefect, not here.

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

Each metric family is declared in one class per producer, each taking its own
`CollectorRegistry`, so tests read values with `registry.get_sample_value(...)`:

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

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import push_to_gateway

from planflow.monitoring.serving_metrics import ServingMetrics
from planflow.settings import StatePaths, settings

# `_created` series double every counter and histogram for no use in PromQL here.
disable_created_metrics()

log = logging.getLogger(__name__)

PUSH_JOB = "planflow"
PUSHGATEWAY_ENV = "PLANFLOW_PUSHGATEWAY_URL"
# Seconds, from a tenth of a second to two hours: components range from a quick
# transform to a model training.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


def _norm(value: str | None) -> str:
    """Lower-case state names ("Failed", "FAILED" -> "failed") so label values stay few."""
    return (value or "unknown").strip().lower() or "unknown"


class RunMetrics:
    """Per-run figures, pushed to the Pushgateway by the run flow (see RunRecorder)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.component_duration = Histogram(
            "planflow_component_duration_seconds",
            "Wall-clock duration of a finished pipeline component, by final state.",
            ["pipeline", "component", "pool", "state"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.component_planned = Gauge(
            "planflow_component_planned_duration_seconds",
            "Duration the plan allotted to a component.",
            ["pipeline", "component", "pool"],
            registry=r,
        )
        self.component_last_duration = Gauge(
            "planflow_component_last_duration_seconds",
            "Actual duration of the component in the latest run.",
            ["pipeline", "component", "pool"],
            registry=r,
        )
        self.component_start_delay = Gauge(
            "planflow_component_start_delay_seconds",
            "Actual start minus planned start of a component (positive = late).",
            ["pipeline", "component", "pool"],
            registry=r,
        )
        self.component_start_time = Gauge(
            "planflow_component_start_timestamp_seconds",
            "Unix time at which the component started running in the latest run.",
            ["pipeline", "component", "pool"],
            registry=r,
        )
        self.component_running = Gauge(
            "planflow_component_running",
            "1 while the component runs, 0 once it finished.",
            ["pipeline", "component", "pool"],
            registry=r,
        )
        self.component_peak_memory = Gauge(
            "planflow_component_peak_memory_bytes",
            "Peak memory of the component in the latest run, measured where it ran alone: in a "
            "process of its own (isolation='process': resident-set high-water mark less the "
            "process's footprint before the call), or a child flow run (container cgroup peak, "
            "else the flow-run process's peak RSS).",
            ["pipeline", "component", "pool"],
            registry=r,
        )
        self.component_cpu = Gauge(
            "planflow_component_cpu_seconds",
            "CPU seconds (user + system, all threads) the component used in the latest run, "
            "measured where it ran in a process of its own.",
            ["pipeline", "component", "pool"],
            registry=r,
        )
        self.component_failures = Counter(
            "planflow_component_failures_total",
            "Component attempts that ended failed or crashed, in this run.",
            ["pipeline", "component", "pool"],
            registry=r,
        )
        self.component_retries = Counter(
            "planflow_component_retries_total",
            "Component attempts retried after a failure, in this run.",
            ["pipeline", "component", "pool"],
            registry=r,
        )
        self.component_oom_kills = Counter(
            "planflow_component_oom_kills_total",
            "Component runs killed for memory (Docker OOMKilled, Kubernetes OOMKilled), in this run.",
            ["pipeline", "component", "pool"],
            registry=r,
        )
        self.pool_demand = Gauge(
            "planflow_pool_planned_peak_demand",
            "Planned peak demand of a resource on a pool (cpu cores, gpus, mem in bytes).",
            ["pipeline", "pool", "resource"],
            registry=r,
        )
        self.pool_capacity = Gauge(
            "planflow_pool_capacity",
            "Capacity of a resource on a pool as the planner saw it (same units as demand).",
            ["pipeline", "pool", "resource"],
            registry=r,
        )
        self.plan_makespan = Gauge(
            "planflow_plan_makespan_seconds", "Makespan of the latest plan.", ["pipeline"], registry=r
        )
        self.plan_lower_bound = Gauge(
            "planflow_plan_lower_bound_seconds", "Proven lower bound on the makespan.", ["pipeline"], registry=r
        )
        self.plan_gap = Gauge(
            "planflow_plan_gap_ratio",
            "Relative optimality gap of the latest plan (0 = proven optimal).",
            ["pipeline"],
            registry=r,
        )
        self.plan_solve = Gauge(
            "planflow_plan_solve_duration_seconds", "Time the planner spent solving.", ["pipeline"], registry=r
        )
        self.plan_info = Gauge(
            "planflow_plan_info",
            "Always 1; labels carry the solver and its status.",
            ["pipeline", "solver", "status"],
            registry=r,
        )
        self.pipeline_running = Gauge(
            "planflow_pipeline_running", "1 while the latest run of the pipeline runs.", ["pipeline"], registry=r
        )
        self.pipeline_start_time = Gauge(
            "planflow_pipeline_start_timestamp_seconds",
            "Unix time at which the latest run was planned and started.",
            ["pipeline"],
            registry=r,
        )
        self.pipeline_slip = Gauge(
            "planflow_pipeline_slip_seconds",
            "How far the latest run is behind its plan: the largest component start delay "
            "while it runs, actual minus planned makespan once it finished.",
            ["pipeline"],
            registry=r,
        )
        self.pipeline_planned_makespan = Gauge(
            "planflow_pipeline_planned_makespan_seconds",
            "Planned makespan of the latest run.",
            ["pipeline"],
            registry=r,
        )
        self.pipeline_eta = Gauge(
            "planflow_pipeline_eta_timestamp_seconds",
            "When the latest run is expected to finish (Unix time): its plan's finish, "
            "moved as its components start and end early or late.",
            ["pipeline"],
            registry=r,
        )
        self.pipeline_makespan = Gauge(
            "planflow_pipeline_makespan_seconds",
            "Actual makespan of the latest finished run.",
            ["pipeline"],
            registry=r,
        )
        self.pipeline_finished = Counter(
            "planflow_pipeline_runs_finished_total",
            "Runs of the pipeline that finished, by final state (per pushing process).",
            ["pipeline", "state"],
            registry=r,
        )
        self.pipeline_last_finish = Gauge(
            "planflow_pipeline_last_finish_timestamp_seconds",
            "Unix time at which the latest run finished.",
            ["pipeline", "state"],
            registry=r,
        )
        self.push_failures = Counter(
            "planflow_push_failures_total",
            "Pushes to the Pushgateway that failed (kept local, never raised).",
            ["pipeline"],
            registry=r,
        )


class ExporterMetrics:
    """What the exporter reads from the Prefect server (monitoring/exporter.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.prefect_up = Gauge(
            "planflow_exporter_prefect_up",
            "1 when the last poll of the Prefect API succeeded, 0 otherwise.",
            registry=r,
        )
        self.poll_duration = Gauge("planflow_exporter_poll_duration_seconds", "Duration of the last poll.", registry=r)
        self.results_bytes = Gauge(
            "planflow_results_bytes",
            "Size of the results folder (persisted component outputs; `planflow results gc` bounds it).",
            registry=r,
        )
        self.poll_errors = Counter(
            "planflow_exporter_poll_errors_total", "Polls of the Prefect API that failed.", registry=r
        )
        self.last_success = Gauge(
            "planflow_exporter_last_success_timestamp_seconds", "Unix time of the last successful poll.", registry=r
        )
        self.flow_runs = Gauge(
            "planflow_prefect_flow_runs",
            "Flow runs currently in a non-terminal state, by flow, deployment and work pool.",
            ["flow", "deployment", "deployment_id", "work_pool", "state"],
            registry=r,
        )
        self.flow_runs_finished = Counter(
            "planflow_prefect_flow_runs_finished_total",
            "Flow runs seen reaching a terminal state since the exporter started (the remediation "
            "machinery's own runs are counted in planflow_prefect_remediation_runs_finished_total).",
            ["flow", "deployment", "deployment_id", "work_pool", "state"],
            registry=r,
        )
        self.remediation_runs_finished = Counter(
            "planflow_prefect_remediation_runs_finished_total",
            "Flow runs of the remediation machinery (work pool or tag planflow-remediation) seen "
            "reaching a terminal state, by remediation flow; counted apart from "
            "planflow_prefect_flow_runs_finished_total so that a failing remediation alerts "
            "people and never feeds a pool's failure rate.",
            ["flow", "state"],
            registry=r,
        )
        self.last_failure = Gauge(
            "planflow_prefect_flow_run_last_failure_timestamp_seconds",
            "End time of the latest flow run that failed or crashed.",
            ["flow", "deployment", "deployment_id", "work_pool", "state"],
            registry=r,
        )
        self.late_runs = Gauge(
            "planflow_prefect_late_runs",
            "Scheduled flow runs past their start time (state Late), per work queue.",
            ["work_pool", "work_queue"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "planflow_prefect_work_queue_depth",
            "Flow runs waiting on a work queue (Scheduled, Late or Pending).",
            ["work_pool", "work_queue"],
            registry=r,
        )
        self.queue_ready = Gauge(
            "planflow_prefect_work_queue_ready",
            "1 when the work queue's status is READY.",
            ["work_pool", "work_queue"],
            registry=r,
        )
        self.pool_status = Gauge(
            "planflow_prefect_work_pool_status",
            "1 for the work pool's current status (ready, not_ready, paused), else 0.",
            ["work_pool", "type", "status"],
            registry=r,
        )
        self.workers = Gauge(
            "planflow_prefect_workers", "Workers known to a work pool, by status.", ["work_pool", "status"], registry=r
        )
        self.pool_deployments = Gauge(
            "planflow_prefect_work_pool_deployments",
            "Deployments whose work pool is this pool (0 and no worker: a pool nobody runs).",
            ["work_pool"],
            registry=r,
        )
        # Shared pools (monitoring/pool_calendar.py): what the calendar reserves now, what
        # the runs hold in the pools' global concurrency limits, and the limits' size.
        self.pool_reserved = Gauge(
            "planflow_pool_calendar_reserved",
            "Resources the pool calendar reserves now (running and due components of every run), per pool.",
            ["pool", "resource"],
            registry=r,
        )
        self.pool_held = Gauge(
            "planflow_pool_slots_held",
            "Resources held now in the pool's shared slots (global concurrency limits), per pool.",
            ["pool", "resource"],
            registry=r,
        )
        self.pool_limit = Gauge(
            "planflow_pool_slots_capacity",
            "The pool's capacity as its global concurrency limit says, per pool.",
            ["pool", "resource"],
            registry=r,
        )
        self.pool_waiting_runs = Gauge(
            "planflow_pool_calendar_waiting_runs",
            "Runs in the pool calendar with components planned on the pool and none running there yet.",
            ["pool"],
            registry=r,
        )
        self.heartbeat_age = Gauge(
            "planflow_prefect_worker_heartbeat_age_seconds",
            "Seconds since the freshest worker heartbeat of the work pool.",
            ["work_pool"],
            registry=r,
        )


class BridgeMetrics:
    """The Alertmanager-to-Prefect bridge's own figures (monitoring/bridge/)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.received = Counter(
            "planflow_bridge_alerts_received_total",
            "Alerts received from Alertmanager and stored, by alert status.",
            ["status"],
            registry=r,
        )
        self.duplicates = Counter(
            "planflow_bridge_alerts_duplicate_total",
            "Alerts received again (same fingerprint, startsAt and status) and dropped.",
            registry=r,
        )
        self.rejected = Counter(
            "planflow_bridge_requests_rejected_total", "Webhook requests refused, by reason.", ["reason"], registry=r
        )
        self.forwarded = Counter(
            "planflow_bridge_events_forwarded_total", "Prefect events accepted by the Prefect API.", registry=r
        )
        self.forward_failures = Counter(
            "planflow_bridge_forward_failures_total",
            "Attempts to forward a batch of events that failed (retried later).",
            registry=r,
        )
        self.spool_depth = Gauge("planflow_bridge_spool_depth", "Alerts stored and not yet forwarded.", registry=r)
        self.oldest_pending_age = Gauge(
            "planflow_bridge_spool_oldest_age_seconds",
            "Age of the oldest alert waiting in the spool (0 when empty).",
            registry=r,
        )


class RemediationMetrics:
    """The remediation flows' audit figures (pushed by flows/remediation.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.remediations = Counter(
            "planflow_remediations_total",
            "Remediations attempted, by action (retry, failover, rescale) and outcome "
            "(succeeded, failed, skipped, dry_run, rate_limited).",
            ["action", "outcome"],
            registry=registry,
        )
        self.alert_latency = Gauge(
            "planflow_remediation_alert_latency_seconds",
            "Seconds from the triggering event (an alert, or a failed run) to its remediation "
            "flow running, for the last remediation of each action.",
            ["action"],
            registry=registry,
        )


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
