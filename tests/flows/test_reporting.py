"""What a run shows: the planned-versus-actual table says what its figures mean."""

from __future__ import annotations

import toy_dags

from planflow.core.component import component
from planflow.core.pipeline import Pipeline
from planflow.planner import PlannerOptions
from planflow.runtime import reporting
from planflow.runtime.dispatch import StepRecord
from planflow.runtime.planning import plan_pipeline

CAPACITY = {"local": {"cpu": 1.0, "gpu": 0.0, "mem_gib": 8.0}}


def _plan_and_records():
    """numbers is planned for 40 s but takes 9.02 s, so total starts 30.98 s before its
    planned start (40 s) and, planned for 10 s, runs 15 s."""
    numbers = component(toy_dags.numbers.fn, name="numbers", cpu=1, est_seconds=40)
    total = component(toy_dags.total.fn, name="total", cpu=1, est_seconds=10)
    pp = plan_pipeline(Pipeline("slow-fast", [numbers, total]), CAPACITY, {}, PlannerOptions(time_limit_s=5))
    records = {
        "numbers": StepRecord("numbers", "local", "Completed", started=0.0, finished=9.0),
        "total": StepRecord("total", "local", "Completed", started=9.02, finished=24.02),
    }
    return pp, records


def test_start_delays_and_overruns_are_said_in_words_with_units():
    assert reporting.start_text(-30.98) == "started 31.0 s early"
    assert reporting.start_text(2.5) == "started 2.5 s late"
    assert reporting.start_text(0.01) == "on time"
    assert reporting.start_text(None) == "not started"
    assert reporting.ratio_text(1.5) == "1.50×"
    assert reporting.ratio_text(None) == "-"


def test_planned_versus_actual_table_has_units_and_a_legend():
    pp, records = _plan_and_records()
    rows = {row["component"]: row for row in reporting.planned_vs_actual(pp, records)}
    assert rows["total"]["start_delay_s"] == -30.98 and rows["total"]["overrun"] == 1.5  # the data stays numeric
    markdown = reporting.actual_markdown(pp, records, "slow-fast")
    lines = markdown.splitlines()
    assert "| component | pool | state | start | planned (s) | actual (s) | actual/planned |" in lines
    assert "| numbers | local | Completed | on time | 40.00 | 9.00 | 0.23× |" in lines
    assert "| total | local | Completed | started 31.0 s early | 10.00 | 15.00 | 1.50× |" in lines
    assert "Makespan achieved **24.02 s** against **50.00 s** planned (actual/planned 0.48×)." in lines
    assert reporting.PLANNED_VS_ACTUAL_LEGEND in lines
    assert "starts early when the components before it finish sooner than their estimates" in markdown
