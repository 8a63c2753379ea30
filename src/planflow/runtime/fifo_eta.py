"""A fifo run's place in the pools' calendar: no plan, but an expected start and finish.

A run under policy "fifo" is dispatched first come, first served. With the pools
shared, it still writes its entry in the calendar (what it will hold, and when it
should finish), so that `planflow calendar` shows it and the runs planned after it
leave it room: its steps are placed in their dispatch order, each at the earliest time
it fits beside what the other runs hold (replan.list_schedule), with the durations the
planner would take (learned or declared).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from planflow.core.pipeline import Pipeline
from planflow.runtime.calendar import others_held, read_calendar
from planflow.runtime.dispatch import Assignment
from planflow.runtime.planning import RunPlan, estimated_seconds
from planflow.runtime.replan import Item, list_schedule


def place_in_order(
    order: list[str],
    assignments: Mapping[str, Assignment],
    seconds: Mapping[str, float],
    upstream: Callable[[str], tuple[str, ...]],
    capacities: Mapping[str, Mapping[str, float]],
    held: Mapping[str, list[tuple[float, float, Mapping[str, float]]]],
) -> dict[str, Assignment]:
    """The assignments with a planned start and finish (s from now): each step in `order`
    at the earliest time it fits beside `held` (how a fifo run gets its ETA)."""
    items = [Item(s, assignments[s].pool, seconds[s], assignments[s].demand, upstream(s)) for s in order]
    times = list_schedule(items, capacities, held)
    return {s: replace(a, planned_start=times[s][0], planned_finish=times[s][1]) for s, a in assignments.items()}


def place_fifo(
    plan: RunPlan, pipeline: Pipeline, exclude: str, params: Mapping[str, Any] | None = None, mode: str = "inprocess"
) -> RunPlan:
    """A fifo run's plan with each step's expected start and finish: placed in its
    dispatch order into what the other runs leave (their entries read now), with the
    durations the planner would take. Its dispatch order stays as it was."""
    now = time.time()
    held = others_held(read_calendar(clean=True), plan.capacities, exclude, now)
    seconds = estimated_seconds(pipeline, plan.assignments, params, mode)
    placed = place_in_order(plan.order, plan.assignments, seconds, pipeline.upstream, plan.capacities, held)
    busy = sum(len(v) for v in held.values())
    return replace(plan, assignments=placed, planned_at=now, busy=busy)
