"""The `planflow-plan` dashboard: plan against actual."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from planflow.dashboards.panels import PIPELINE, Layout, bars, big, grid, new_dashboard, q, thresholds, ts, variable


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
