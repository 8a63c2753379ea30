"""The `planflow-plan` dashboard: plan against actual."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from planflow.dashboards.panels import (
    PIPELINE,
    Layout,
    bars,
    big,
    lines,
    new_dashboard,
    of,
    q,
    table_of,
    thresholds,
    variable,
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
    latest = (
        ("Planned makespan", "planflow_plan_makespan_seconds", {"unit": "s"}),
        ("Achieved makespan", "planflow_pipeline_makespan_seconds", {"unit": "s"}),
        (
            "Slip (actual - planned)",
            "planflow_pipeline_slip_seconds",
            {
                "unit": "s",
                "colors": thresholds((None, "green"), (1, "orange"), (30, "red")),
                "description": "While running: the largest component start delay; once finished: "
                "actual minus planned makespan.",
            },
        ),
        (
            "Lower bound",
            "planflow_plan_lower_bound_seconds",
            {"unit": "s", "description": "Proven lower bound on the makespan."},
        ),
        (
            "Optimality gap",
            "planflow_plan_gap_ratio",
            {"unit": "percentunit", "colors": thresholds((None, "green"), (0.05, "orange"), (0.2, "red"))},
        ),
        ("Solve time", "planflow_plan_solve_duration_seconds", {"unit": "s"}),
    )
    for title, metric, options in latest:
        lay.add(big(title, of(metric, sel, "{{pipeline}}"), **options), 4, 5)
    lay.add(
        lines(
            "Makespan: planned, achieved and lower bound",
            sel,
            "{{pipeline}}",
            ("planflow_plan_makespan_seconds", "planned"),
            ("planflow_pipeline_makespan_seconds", "achieved"),
            ("planflow_plan_lower_bound_seconds", "lower bound"),
            unit="s",
        ),
        12,
        8,
    )
    lay.add(
        lines(
            "Solver: gap and solve time",
            sel,
            "{{pipeline}}",
            ("planflow_plan_gap_ratio", "gap"),
            ("planflow_plan_solve_duration_seconds", "solve seconds"),
            description="Gap is a ratio (0 = proven optimal); solve time in seconds.",
        ),
        12,
        8,
    )
    lay.row("Per component")
    lay.add(
        bars(
            "Start delay per component (positive = late)",
            of("planflow_component_start_delay_seconds", sel, "{{pipeline}} / {{component}}", instant=True),
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
        table_of(
            "Planned and actual duration per component",
            sel,
            "planflow_component_planned_duration_seconds",
            "planflow_component_last_duration_seconds",
            "planflow_component_start_delay_seconds",
            hide=("Time", "job", "instance"),
            unit="s",
            description="Value #A planned, #B actual, #C start delay (seconds).",
        ),
        16,
        9,
    )
    lay.add(
        table_of(
            "Solver and status",
            sel,
            "planflow_plan_info",
            hide=("Time", "job", "instance", "__name__", "Value"),
        ),
        8,
        9,
    )
    return d
