"""Component durations learned from earlier runs, read back from the Prefect API.

Two records of a run are already on the server, so nothing else is stored (the API is
the history):

1. each run's summary table artifact (key `<pipeline>-summary`, one version per run):
   per component its pool and the seconds the dispatcher held its pool's capacity for
   it, from release to completion. This is what a plan must predict: it includes the
   orchestration around the work (task submission, state changes, result persistence)
   and, in distributed mode, the child flow run's start-up. Preferred.
2. the task runs, tagged `pool:<name>`, with their time in Running: the fallback for a
   component no summary covers yet (e.g. runs of a pipeline flow planflow did not
   dispatch).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
    TaskRunFilter,
    TaskRunFilterName,
    TaskRunFilterState,
    TaskRunFilterStateName,
)
from prefect.client.schemas.sorting import ArtifactSort, TaskRunSort

from planflow.runtime.tags import POOL_TAG

MIN_SECONDS = 0.05  # a plan needs positive durations; sub-50 ms steps round up to this


@dataclass(frozen=True)
class Estimate:
    """A component's duration on one pool, and where the figure came from."""

    seconds: float
    source: str  # "declared" | "declared for this pool" | "history: median of N runs"


def artifact_slug(pipeline: str) -> str:
    """The pipeline's part of its artifact keys (`<slug>-summary`, `<slug>-plan`, ...)."""
    return "".join(c if c.isalnum() else "-" for c in pipeline.lower()).strip("-")


def recent_durations(pipeline: str, steps: Iterable[str], runs: int) -> dict[tuple[str, str], list[float]]:
    """Seconds of the last `runs` completed runs of each step, per pool (newest first):
    from the run summaries when there are any for the step, else from its task runs."""
    steps = list(steps)
    durations = summary_durations(pipeline, steps, runs)
    covered = {step for step, _ in durations}
    missing = [step for step in steps if step not in covered]
    if missing:
        durations.update(task_run_durations(pipeline, missing, runs))
    return durations


def summary_durations(pipeline: str, steps: Iterable[str], runs: int) -> dict[tuple[str, str], list[float]]:
    """From the last `runs` versions of the pipeline's summary table artifact."""
    wanted = set(steps)
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{artifact_slug(pipeline)}-summary"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=max(1, runs) * 2,
        )
    for artifact in artifacts:
        rows = artifact.data
        if isinstance(rows, str):
            try:
                rows = json.loads(rows)
            except ValueError:
                continue
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict) or row.get("state") != "Completed":
                continue
            step, pool, seconds = row.get("component"), row.get("pool"), row.get("seconds")
            if (
                step in wanted
                and pool
                and isinstance(seconds, (int, float))
                and seconds > 0
                and len(durations[(step, pool)]) < runs
            ):
                durations[(step, pool)].append(float(seconds))
    return dict(durations)


def task_run_durations(pipeline: str, steps: Iterable[str], runs: int) -> dict[tuple[str, str], list[float]]:
    """From the task runs' time in Running. Cached task runs (a retry reading a stored
    result) are not counted: they did no work."""
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
                pool = next((t[len(POOL_TAG) :] for t in run.tags if t.startswith(POOL_TAG)), None)
                seconds = run.total_run_time.total_seconds() if run.total_run_time else 0.0
                if pool and seconds > 0 and len(durations[(step, pool)]) < runs:
                    durations[(step, pool)].append(seconds)
    return dict(durations)


def estimate(
    declared: float,
    declared_for_pool: bool,
    history: Mapping[tuple[str, str], list[float]],
    step: str,
    pool: str,
) -> Estimate:
    """The median of recent actual durations when there are any, else the declaration."""
    samples = history.get((step, pool), [])
    if samples:
        runs = len(samples)
        return Estimate(
            max(MIN_SECONDS, statistics.median(samples)),
            f"history: median of {runs} run{'s' if runs > 1 else ''}",
        )
    return Estimate(max(MIN_SECONDS, declared), "declared for this pool" if declared_for_pool else "declared")
