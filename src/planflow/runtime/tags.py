"""The tags planflow puts on runs: how its automations find them.

Every flow run of a pipeline carries `planflow` and `pipeline:<name>` (the retry and
crash automations match them), whoever started it: `planflow run`, a deployment a team
made with `prefect deploy`, or a plain call of the flow. A component's task run carries
only the tags its author gave it: Prefect takes a concurrency slot per task-run tag, a
server round trip each, so planflow adds none there (`step_task`).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from prefect.client.orchestration import get_client

if TYPE_CHECKING:
    from planflow.core.component import Component

PLANFLOW_TAG = "planflow"
PIPELINE_TAG_PREFIX = "pipeline:"


def pipeline_tags(pipeline: str) -> list[str]:
    """The tags of every flow run of pipeline `pipeline`."""
    return [PLANFLOW_TAG, f"{PIPELINE_TAG_PREFIX}{pipeline}"]


def tag_flow_run(flow_run: Any, pipeline: str) -> None:
    """Add the pipeline's tags to `flow_run` when it lacks them (one API call at most)."""
    current = set(flow_run.tags or [])
    wanted = set(pipeline_tags(pipeline))
    if not wanted <= current:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, tags=sorted(current | wanted))


def step_task(component: Component, step: str) -> Component:
    """The task that runs `step`: a shallow copy of its component named after the step,
    with only the tags its author gave it. Not `with_options`: Task.__init__ reads the
    function's source twice (about 1 ms per step on the dispatcher's thread) for the
    same values."""
    task = copy.copy(component)
    task.name = task.task_run_name = step
    task.tags = set(component.tags) - {PLANFLOW_TAG}  # every component has it; the flow run says it
    return task
