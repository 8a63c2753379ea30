"""The alerts about pipelines and work pools: what the self-healing loop acts on.

Each goes to the bridge (Prefect's automations act on it) and to the human receiver.
Pool alerts leave out the remediation's own pool and pools nobody runs (no deployment
and no worker, e.g. created by `planflow workpools apply` and never used): the
failover and the rescale are never fed by the remediation machinery, and an unused
pool does not alert without end.
"""

from __future__ import annotations

import math

from planflow.monitoring.alert_rule import EXPORTER, REMEDIATION_POOL, AlertRule, Scenario, sel, step_series
from planflow.monitoring.thresholds import Params, seconds
from planflow.prefect.reserved import COMPONENT_FLOW

PUSHED = {"job": "planflow", "instance": ""}
RUN_LABELS = {
    **EXPORTER,
    "flow": "fraud-risk",
    "deployment": "nightly",
    "deployment_id": "3f1c0d7e-0000-4000-8000-000000000001",
    "work_pool": "local",
}
NOT_REMEDIATION = f'work_pool!="{REMEDIATION_POOL}"'
# The runs a pool's failure rate counts: a component's child killed for memory (the exporter's
# state oom_killed, run again with more) is neither a failure nor a run of the pool's.
POOL_RUNS = NOT_REMEDIATION + ', state!="oom_killed"'
# Pools with no deployment and no worker at all (online or offline).
UNUSED_POOLS = (
    "(\n  planflow_prefect_work_pool_deployments == 0\n"
    "  unless on (work_pool) (sum by (work_pool) (planflow_prefect_workers) > 0)\n)"
)


def _pool_scenario(metric: str, labels: dict[str, str], low: float, high: float):
    """`metric` goes bad on pool `local` (it alerts), on a pool with a worker and no
    deployment (it alerts), and on the remediation pool and an unused pool (they do not)."""

    def build(p: Params) -> Scenario:
        values, crossing = step_series(p, low, high)
        n = (crossing + p.for_) // p.step + 20
        pools = {"local": (1, 1), "adhoc": (0, 1), REMEDIATION_POOL: (3, 1), "unused": (0, 0)}
        series = []
        for pool, (deployments, workers) in pools.items():
            at = {**EXPORTER, "work_pool": pool}
            series += [
                (sel(metric, {**labels, "work_pool": pool}), values),
                (sel("planflow_prefect_work_pool_deployments", at), f"{deployments}x{n}"),
                (sel("planflow_prefect_workers", {**at, "status": "online"}), f"0x{n}"),
                (sel("planflow_prefect_workers", {**at, "status": "offline"}), f"{workers}x{n}"),
            ]
        return Scenario(
            series,
            crossing + p.for_ + 2 * p.eval,
            {**labels, "work_pool": "local"},
            quiet_at=[crossing - p.step],
            more_labels=[{**labels, "work_pool": "adhoc"}],
        )

    return build


def _run_failed(p: Params) -> Scenario:
    window = seconds(p.raw["failure_window"])
    failed_at = 100 * p.step
    samples = math.ceil((failed_at + 3 * window) / p.step)
    labels = {**RUN_LABELS, "state": "failed"}
    remediation = {**labels, "flow": "planflow-failover", "work_pool": REMEDIATION_POOL}
    component = {**labels, "flow": COMPONENT_FLOW, "deployment": "local-process"}  # its parent run reports it
    metric = "planflow_prefect_flow_run_last_failure_timestamp_seconds"
    return Scenario(
        [(sel(metric, m), f"{failed_at}x{samples}") for m in (labels, remediation, component)],
        failed_at + window // 2 // p.step * p.step,
        {**labels, "pipeline": "fraud-risk"},
        quiet_at=[failed_at + 2 * window],
    )


def _overrun(p: Params) -> Scenario:
    key = {**PUSHED, "pipeline": "fraud-risk", "component": "risk_model", "pool": "local"}
    planned = 10 * p.step
    factor = float(p.thresholds["overrun_factor"])
    fire = math.ceil((factor * planned + p.for_) / p.step + 3) * p.step
    n = fire // p.step + 5
    quiet_key = {**key, "component": "features"}
    return Scenario(
        [
            (sel("planflow_component_start_timestamp_seconds", key), f"0x{n}"),
            (sel("planflow_component_planned_duration_seconds", key), f"{planned}x{n}"),
            (sel("planflow_component_running", key), f"1x{n}"),
            # a finished component in a finished pipeline never alerts
            (sel("planflow_component_last_duration_seconds", quiet_key), f"{planned * 5}x{n}"),
            (sel("planflow_component_planned_duration_seconds", quiet_key), f"{planned}x{n}"),
            (sel("planflow_component_running", quiet_key), f"0x{n}"),
            (sel("planflow_pipeline_running", {**PUSHED, "pipeline": "fraud-risk"}), f"0x{n}"),
        ],
        fire,
        key,
        quiet_at=[planned],
    )


def _slip(p: Params) -> Scenario:
    key = {**PUSHED, "pipeline": "fraud-risk"}
    planned = 20 * p.step
    ratio = float(p.thresholds["slip_ratio"])
    fire = math.ceil(((1 + ratio) * planned + p.for_) / p.step + 3) * p.step
    n = fire // p.step + 5
    done = {**PUSHED, "pipeline": "finished-one"}
    return Scenario(
        [
            (sel("planflow_pipeline_start_timestamp_seconds", key), f"0x{n}"),
            (sel("planflow_pipeline_planned_makespan_seconds", key), f"{planned}x{n}"),
            (sel("planflow_pipeline_slip_seconds", key), f"0x{n}"),
            (sel("planflow_pipeline_running", key), f"1x{n}"),
            (sel("planflow_pipeline_start_timestamp_seconds", done), f"0x{n}"),
            (sel("planflow_pipeline_planned_makespan_seconds", done), f"{planned}x{n}"),
            (sel("planflow_pipeline_slip_seconds", done), f"{planned}x{n}"),
            (sel("planflow_pipeline_running", done), f"0x{n}"),
        ],
        fire,
        {"pipeline": "fraud-risk", "job": "planflow", "instance": ""},
        quiet_at=[planned],
    )


def _oom_kills(p: Params) -> Scenario:
    key = {**PUSHED, "pipeline": "oom-demo", "component": "hungry", "pool": "docker"}
    kills = int(p.thresholds["oom_kills"])
    fire = math.ceil(p.for_ / p.step + 3) * p.step
    n = fire // p.step + 5
    once = {**key, "component": "train"}
    return Scenario(
        [
            (sel("planflow_component_oom_kills_total", key), f"{kills}x{n}"),
            (sel("planflow_component_oom_kills_total", once), f"{kills - 1}x{n}"),  # below: quiet
        ],
        fire,
        key,
    )


def _failure_rate(p: Params) -> Scenario:
    window = seconds(p.raw["failure_rate_window"])
    fire = window + p.for_ + 2 * p.step
    n = fire // p.step + 5
    metric = "planflow_prefect_flow_runs_finished_total"
    series = []
    # gpu fails, cpu does not; the remediation pool fails too but never alerts here. Components
    # killed for memory (oom_killed) count for nothing: on gpu they would dilute its failures
    # below the rate, and mem, where nothing else ends, must not alert.
    runs = (("gpu", 1, 0, 3), ("cpu", 0, 1, 0), (REMEDIATION_POOL, 1, 0, 0), ("mem", 0, 0, 2))
    for pool, failed, completed, oom in runs:
        labels = {**RUN_LABELS, "work_pool": pool}
        series += [
            (sel(metric, {**labels, "state": "failed"}), f"0+{failed}x{n}"),
            (sel(metric, {**labels, "state": "completed"}), f"0+{completed}x{n}"),
            (sel(metric, {**labels, "state": "oom_killed"}), f"0+{oom}x{n}"),
            (sel("planflow_prefect_work_pool_deployments", {**EXPORTER, "work_pool": pool}), f"1x{n}"),
        ]
    return Scenario(series, fire, {"work_pool": "gpu"}, quiet_at=[p.step])


def _runs(selector: str) -> str:
    return f"planflow_prefect_flow_runs_finished_total{{{selector}}}"


ALERTS = [
    AlertRule(
        "PlanflowPipelineRunFailed",
        "warning",
        "planflow-pipelines",
        "label_replace(\n  time() - planflow_prefect_flow_run_last_failure_timestamp_seconds{"
        + NOT_REMEDIATION
        + f', flow!="{COMPONENT_FLOW}"}}'
        ' < {{{failure_window_seconds}}},\n  "pipeline", "$1", "flow", "(.+)"\n)',
        "A run of {{ $labels.flow }} ended {{ $labels.state }}",
        "A flow run of flow {{ $labels.flow }} {{ if $labels.deployment }}(deployment '{{ $labels.deployment }}', "
        "work pool '{{ $labels.work_pool }}'){{ else }}(not from a deployment){{ end }} ended in state "
        "{{ $labels.state }} within the last "
        "{{{failure_window}}}. The alert resolves {{{failure_window}}} after the last failure.",
        _run_failed,
        for_zero=True,
        to_bridge=True,
    ),
    AlertRule(
        "PlanflowLateRunBacklog",
        "warning",
        "planflow-pools",
        "planflow_prefect_late_runs{" + NOT_REMEDIATION + "} >= {{{late_runs}}}\nunless on (work_pool) " + UNUSED_POOLS,
        "Late flow runs pile up on work queue {{ $labels.work_queue }}",
        "Work queue {{ $labels.work_queue }} of pool {{ $labels.work_pool }} holds at least "
        "{{{late_runs}}} late flow run(s): no worker picks them up in time.",
        _pool_scenario("planflow_prefect_late_runs", {**EXPORTER, "work_queue": "default"}, 0, 3),
        to_bridge=True,
    ),
    AlertRule(
        "PlanflowWorkPoolNotReady",
        "warning",
        "planflow-pools",
        'planflow_prefect_work_pool_status{status="not_ready", ' + NOT_REMEDIATION + "} == 1\n"
        "unless on (work_pool) " + UNUSED_POOLS,
        "Work pool {{ $labels.work_pool }} is not ready",
        "Work pool {{ $labels.work_pool }} ({{ $labels.type }}) has no online worker: its flow runs will not start.",
        _pool_scenario(
            "planflow_prefect_work_pool_status", {**EXPORTER, "type": "process", "status": "not_ready"}, 0, 1
        ),
        to_bridge=True,
    ),
    AlertRule(
        "PlanflowWorkPoolPaused",
        "warning",
        "planflow-pools",
        'planflow_prefect_work_pool_status{status="paused", ' + NOT_REMEDIATION + "} == 1\n"
        "unless on (work_pool) " + UNUSED_POOLS,
        "Work pool {{ $labels.work_pool }} is paused",
        "Work pool {{ $labels.work_pool }} ({{ $labels.type }}) is paused: none of its flow runs starts until "
        "it is resumed. The failover pauses a pool while its alert lasts and resumes it once a worker is back; "
        "a pool paused by hand stays paused.",
        _pool_scenario("planflow_prefect_work_pool_status", {**EXPORTER, "type": "process", "status": "paused"}, 0, 1),
    ),
    AlertRule(
        "PlanflowWorkerHeartbeatStale",
        "warning",
        "planflow-pools",
        "planflow_prefect_worker_heartbeat_age_seconds{"
        + NOT_REMEDIATION
        + "} > {{{heartbeat_max_age_seconds}}}\nunless on (work_pool) "
        + UNUSED_POOLS,
        "The workers of pool {{ $labels.work_pool }} stopped sending heartbeats",
        "No worker of pool {{ $labels.work_pool }} sent a heartbeat for more than "
        "{{{heartbeat_max_age_seconds}}} s: the worker is gone or hung.",
        _pool_scenario("planflow_prefect_worker_heartbeat_age_seconds", dict(EXPORTER), 5, 100000),
        to_bridge=True,
    ),
    AlertRule(
        "PlanflowComponentOverrun",
        "warning",
        "planflow-plan",
        "(\n  (time() - planflow_component_start_timestamp_seconds)\n"
        "    / (planflow_component_planned_duration_seconds > 0)\n"
        "    and on (job, instance, pipeline, component, pool) (planflow_component_running == 1)\n"
        ") > {{{overrun_factor}}}\nor\n(\n"
        "  planflow_component_last_duration_seconds\n"
        "    / (planflow_component_planned_duration_seconds > 0) > {{{overrun_factor}}}\n"
        "    and on (job, instance, pipeline) (planflow_pipeline_running == 1)\n"
        "    and on (job, instance, pipeline, component, pool) (planflow_component_running == 0)\n)",
        "Component {{ $labels.component }} of {{ $labels.pipeline }} overruns its plan",
        "Component {{ $labels.component }} of pipeline {{ $labels.pipeline }} on pool "
        "{{ $labels.pool }} has run more than {{{overrun_factor}}} times its planned duration.",
        _overrun,
        to_bridge=True,
    ),
    AlertRule(
        "PlanflowComponentOomKilledRepeatedly",
        "warning",
        "planflow-plan",
        "planflow_component_oom_kills_total >= {{{oom_kills}}}",
        "Component {{ $labels.component }} of {{ $labels.pipeline }} was killed for memory repeatedly",
        "Component {{ $labels.component }} of pipeline {{ $labels.pipeline }} on pool {{ $labels.pool }} was "
        "killed for memory at least {{{oom_kills}}} times in its last run; each run again had "
        "more memory, up to PlannerSettings.oom_max_mem_gib.",
        _oom_kills,
    ),
    AlertRule(
        "PlanflowPipelinePlanSlip",
        "warning",
        "planflow-plan",
        "(\n  planflow_pipeline_slip_seconds / (planflow_pipeline_planned_makespan_seconds > 0)"
        " > {{{slip_ratio}}}\n  or\n"
        "  (time() - planflow_pipeline_start_timestamp_seconds - planflow_pipeline_planned_makespan_seconds)\n"
        "    / (planflow_pipeline_planned_makespan_seconds > 0) > {{{slip_ratio}}}\n)\n"
        "and on (job, instance, pipeline) (planflow_pipeline_running == 1)",
        "Running pipeline {{ $labels.pipeline }} is behind its plan",
        "Pipeline {{ $labels.pipeline }} is running later than its plan by more than "
        "{{{slip_ratio}}} of its planned makespan.",
        _slip,
        to_bridge=True,
    ),
    AlertRule(
        "PlanflowPoolFailureRateHigh",
        "warning",
        "planflow-pools",
        "(\n  sum by (work_pool) (increase("
        + _runs('state=~"failed|crashed", ' + NOT_REMEDIATION)
        + "[{{{failure_rate_window}}}]))\n"
        "    / sum by (work_pool) (increase(" + _runs(POOL_RUNS) + "[{{{failure_rate_window}}}]))\n"
        ") > {{{failure_rate}}}\n"
        "and on (work_pool) sum by (work_pool) (increase("
        + _runs(POOL_RUNS)
        + "[{{{failure_rate_window}}}])) >= {{{failure_rate_min_runs}}}\n"
        "unless on (work_pool) " + UNUSED_POOLS,
        "Many flow runs fail on work pool {{ $labels.work_pool }}",
        "More than {{{failure_rate}}} of the flow runs that finished on work pool "
        "'{{ $labels.work_pool }}' in the last {{{failure_rate_window}}} failed or crashed.",
        _failure_rate,
        to_bridge=True,
    ),
]
