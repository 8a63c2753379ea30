"""Every planflow metric family, declared once: one class per producer (a pipeline run,
the exporter, the bridge, the remediation flows; the serving replicas' in
serving_metrics.py), each taking its own `CollectorRegistry`, so that tests read values
with `registry.get_sample_value(...)`. metrics.py lists them (`metric_catalog`) and
records a run's figures (RunRecorder).

Naming follows Prometheus' rules: the `planflow_` prefix, base units (`_seconds`,
`_bytes`, ratios as plain numbers), `_total` on counters, and a few bounded labels
(pipeline, component, pool, state, resource...). Run ids never become labels: one
series per run would grow without bound; a run is named in Prefect, not here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# `_created` series double every counter and histogram for no use in PromQL here.
disable_created_metrics()

# Seconds, from a tenth of a second to two hours: components range from a quick
# transform to a model training.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


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
            "Terminal states flow runs reached since the exporter started, each try of a run retried in "
            "place counted (state oom_killed: a distributed run's component child killed for memory, which "
            "its parent runs again with more; the remediation machinery's own runs are counted in "
            "planflow_prefect_remediation_runs_finished_total).",
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
