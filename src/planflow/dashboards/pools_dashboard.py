"""The `planflow-pools` dashboard: capacity, calendar reservations, slots, queues, workers."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from planflow.dashboards.panels import (
    POOL,
    WORK_POOL,
    Layout,
    bars,
    grid,
    new_dashboard,
    per_resource,
    q,
    table_of,
    thresholds,
    ts,
    variable,
)


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
    per_resource(
        lay,
        "capacity vs planned peak demand",
        sel,
        (("cpu", "short"), ("gpu", "short"), ("memory_bytes", "bytes")),
        ("planflow_pool_capacity", "capacity"),
        ("planflow_pool_planned_peak_demand", "planned peak"),
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
    per_resource(
        lay,
        "reserved vs used vs capacity",
        sel,
        (("cpu", "short"), ("gpu", "short"), ("mem_gib", "short")),
        ("planflow_pool_slots_capacity", "capacity"),
        ("planflow_pool_calendar_reserved", "reserved (calendar)"),
        ("planflow_pool_slots_held", "used (slots held)"),
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
        table_of(
            "Work queues ready",
            wp,
            "planflow_prefect_work_queue_ready",
            hide=("Time", "job", "instance", "__name__"),
            description="Value 1 when the queue is READY.",
        ),
        24,
        6,
    )
    return d
