"""The tags planflow puts on runs: how its automations find them.

Every flow run of a pipeline carries `planflow` and `pipeline:<name>` (the retry and
crash automations match them), whoever started it: `planflow run`, a deployment a team
made with `prefect deploy`, or a plain call of the flow. A call of the flow creates its
run with them (`created_with_tags`); a run created elsewhere (a deployment's) gets them
at its start (`tag_flow_run`, one request). A component's task run carries only the tags
its author gave it and those of the caller's `with tags(...)`: Prefect takes a
concurrency slot per task-run tag, a server round trip each, so planflow adds none there
(`step_task`, `caller_tags_only`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from prefect.client.orchestration import get_client
from prefect.context import TagsContext

if TYPE_CHECKING:
    from planflow.core.component import Component

PLANFLOW_TAG = "planflow"
PIPELINE_TAG_PREFIX = "pipeline:"


def pipeline_tags(pipeline: str) -> list[str]:
    """The tags of every flow run of pipeline `pipeline`."""
    return [PLANFLOW_TAG, f"{PIPELINE_TAG_PREFIX}{pipeline}"]


# the tags created_with_tags added to Prefect's tag context, for the run's body to take off
_ADDED: ContextVar[frozenset[str]] = ContextVar("planflow_added_run_tags", default=frozenset())


@contextmanager
def created_with_tags(pipeline: str) -> Iterator[None]:
    """A flow run created within carries the pipeline's tags from its creation (Prefect
    gives a new run the tags of its context): no request to add them at its start, and no
    moment when the automations would not know it."""
    added = frozenset(pipeline_tags(pipeline)) - TagsContext.get().current_tags
    token = _ADDED.set(added)
    try:
        with TagsContext(current_tags=TagsContext.get().current_tags | added):
            yield
    finally:
        _ADDED.reset(token)


@contextmanager
def caller_tags_only() -> Iterator[None]:
    """Within the body of a flow run created under created_with_tags: Prefect's tag context
    as the caller had it, so that the run's task runs get none of planflow's tags."""
    added = _ADDED.get()
    if not added:
        yield
        return
    token = _ADDED.set(frozenset())
    try:
        with TagsContext(current_tags=TagsContext.get().current_tags - added):
            yield
    finally:
        _ADDED.reset(token)


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
