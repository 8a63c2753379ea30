"""Component durations learned from earlier runs, read back from the Prefect API.

The Prefect server already records every task run with its run time; planflow
tags each with `pool:<name>`, so the recent actual durations of a component on
a pool are one query away. Nothing else is stored: the API is the history.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    TaskRunFilter,
    TaskRunFilterName,
    TaskRunFilterState,
    TaskRunFilterStateName,
)
from prefect.client.schemas.sorting import TaskRunSort

POOL_TAG = "pool:"
MIN_SECONDS = 0.05  # a plan needs positive durations; sub-50 ms steps round up to this


@dataclass(frozen=True)
class Estimate:
    """A component's duration on one pool, and where the figure came from."""

    seconds: float
    source: str  # "declared" | "declared for this pool" | "history: median of N runs"


def recent_durations(
    pipeline: str, steps: Iterable[str], runs: int
) -> dict[tuple[str, str], list[float]]:
    """Seconds of the last `runs` completed runs of each step, per pool (newest first).
    Cached task runs (a retry reading a stored result) are not counted: they did no work."""
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    with get_client(sync_client=True) as client:
        for step in steps:
            task_runs = client.read_task_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[pipeline])),
                task_run_filter=TaskRunFilter(
                    name=TaskRunFilterName(any_=[step]),
                    state=TaskRunFilterState(name=TaskRunFilterStateName(any_=["Completed"])),
                ),
                sort=TaskRunSort.END_TIME_DESC,
                limit=runs * 4,
            )
            for run in task_runs:
                pool = next((t[len(POOL_TAG):] for t in run.tags if t.startswith(POOL_TAG)), None)
                seconds = run.total_run_time.total_seconds() if run.total_run_time else 0.0
                if pool and seconds > 0 and len(durations[(step, pool)]) < runs:
                    durations[(step, pool)].append(seconds)
    return dict(durations)


def estimate(
    declared: float, declared_for_pool: bool, history: Mapping[tuple[str, str], list[float]],
    step: str, pool: str,
) -> Estimate:
    """The median of recent actual durations when there are any, else the declaration."""
    samples = history.get((step, pool), [])
    if samples:
        runs = len(samples)
        return Estimate(
            max(MIN_SECONDS, statistics.median(samples)),
            f"history: median of {runs} run{'s' if runs > 1 else ''}",
        )
    return Estimate(
        max(MIN_SECONDS, declared), "declared for this pool" if declared_for_pool else "declared"
    )
