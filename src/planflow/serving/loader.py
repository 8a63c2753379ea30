"""Read the outputs an online path needs from the last Completed run of its pipeline.

The run is the newest Completed flow run of the flow named after the pipeline; each
output is the result of the task run named after the step, read through Prefect's own
result API (`get_state_result`), so whichever serializer and storage the run used
(local path, a storage block) is what reads it back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    TaskRunFilter,
    TaskRunFilterName,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort
from prefect.states import get_state_result

# planflow's result serializer, registered under its type ("planflow") for reading: results
# that components stored with it cannot be read back without it (bench.serving_baseline,
# which imports only this module, failed so)
from planflow.prefect.serializer import PlanflowSerializer  # noqa: F401


class NoCompletedRunError(LookupError):
    """The pipeline has no Completed run yet: there is no model to serve."""


class RunOutputsError(RuntimeError):
    """A Completed run's outputs cannot be read (missing, or unreadable in storage)."""


class NotServableRun(RunOutputsError):
    """A Completed run that never has outputs to serve (distributed mode): passed over,
    which is no failure to load (no alert)."""


class TaskRunsNotRecordedError(RunOutputsError):
    """The run has no Completed task run for some steps. Right after the run ends this
    is usually the server still recording them: Prefect 3 sends a task run's states as
    events, which the server writes to its database after the flow run's own state."""


@dataclass(frozen=True)
class LoadedRun:
    """The outputs of one Completed run, and which run it is."""

    flow_run_id: str
    flow_run_name: str
    end_time: datetime | None
    outputs: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {
            "flow_run_id": self.flow_run_id,
            "flow_run_name": self.flow_run_name,
            "end_time": self.end_time.isoformat() if self.end_time else None,
        }


@dataclass(frozen=True)
class ServedRuns:
    """Which Completed runs of a pipeline a service may serve: those of `deployment` (NAME
    or FLOW/NAME) that carry every one of `tags` (`planflow serve --deployment, --tag`);
    all of them by default. A tag is how a team promotes a run: a deployment's `tags:` in
    prefect.yaml, or `prefect deployment run ... --tag release`."""

    deployment: str | None = None
    tags: tuple[str, ...] = ()

    def describe(self) -> str:
        """ " of deployment 'nightly' tagged 'release'", or "" for every run."""
        said = f" of deployment '{deployment_name(self.deployment)}'" if self.deployment else ""
        return said + (" tagged " + " and ".join(f"'{t}'" for t in self.tags) if self.tags else "")


def no_run_message(pipeline: str, served: ServedRuns = ServedRuns()) -> str:
    if not served.deployment and not served.tags:
        return (
            f"pipeline '{pipeline}' has no Completed run yet, so there is no model to serve. "
            f"Fix: planflow run {pipeline}"
        )
    name = deployment_name(served.deployment) if served.deployment else "DEPLOYMENT"
    tags = "".join(f" --tag {t}" for t in served.tags)
    return (
        f"pipeline '{pipeline}' has no Completed run{served.describe()} yet, so there is no model to serve. "
        f"Fix: prefect deployment run '{pipeline}/{name}'{tags}"
    )


DEPLOYMENT_CHECK_SECONDS = 10.0  # the most `planflow serve` waits to learn whether --deployment exists


async def missing_deployment(pipeline: str, deployment: str) -> str | None:
    """Why `deployment` (NAME or FLOW/NAME) names no deployment of the flow `pipeline`,
    with the ones it has and the fix; None when it does, or when the API cannot say in
    DEPLOYMENT_CHECK_SECONDS (the service then names the API's problem itself)."""
    flow, _, name = deployment.rpartition("/")

    async def read() -> list[str]:
        async with get_client() as client:
            found = await client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[pipeline])))
        return sorted(d.name for d in found)

    try:
        names = await asyncio.wait_for(read(), DEPLOYMENT_CHECK_SECONDS)
    except Exception:  # out of reach, or too slow: not this check's to say
        return None
    if (not flow or flow == pipeline) and name in names:
        return None
    other_flow = f" ('{flow}' is not this pipeline's flow, '{pipeline}')" if flow and flow != pipeline else ""
    fix = f"--deployment {names[0]}" if names else f"deploy it first (prefect deploy), then --deployment {name}"
    return (
        f"--deployment {deployment}: pipeline '{pipeline}' has no deployment named '{name}'{other_flow}; "
        f"its deployments: {', '.join(names) or 'none'}. Fix: {fix}"
    )


def deployment_name(deployment: str) -> str:
    """A deployment's name from `NAME` or `FLOW/NAME` (how `prefect deployment run` names it)."""
    return deployment.rsplit("/", 1)[-1]


async def completed_runs(
    client: PrefectClient, pipeline: str, limit: int, served: ServedRuns = ServedRuns()
) -> list[FlowRun]:
    """The newest `limit` Completed flow runs of the flow named `pipeline` that `served`
    allows, newest first."""
    deployment = served.deployment
    only = DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name(deployment)])) if deployment else None
    return await client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[pipeline])),
        deployment_filter=only,
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
            tags=FlowRunFilterTags(all_=list(served.tags)) if served.tags else None,
        ),
        sort=FlowRunSort.END_TIME_DESC,
        limit=limit,
    )


async def latest_completed_run(
    client: PrefectClient, pipeline: str, served: ServedRuns = ServedRuns()
) -> FlowRun | None:
    """The newest Completed flow run of the flow named `pipeline` that `served` allows, or None."""
    runs = await completed_runs(client, pipeline, 1, served)
    return runs[0] if runs else None


async def load_run(
    client: PrefectClient, flow_run: FlowRun, steps: Iterable[str], pipeline: str = "<pipeline>"
) -> LoadedRun:
    """Read the outputs of `steps` from `flow_run` (a run of `pipeline`); RunOutputsError
    names what failed."""
    steps = list(steps)
    if (flow_run.parameters or {}).get("mode") == "distributed":
        # its steps ran as flow runs of their own: it never gets task runs to read, and the
        # service waited RECORD_GRACE_SECONDS (2 minutes, not ready) before it knew that
        raise NotServableRun(
            f"run '{flow_run.name}' ({flow_run.id}) ran in distributed mode: each step's output is in a flow run of "
            f"its own, which serving does not read. Fix: run the pipeline in process (planflow run {pipeline}) "
            "for the model to serve"
        )
    task_runs = await client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])),
        task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(any_=steps),
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.COMPLETED])),
        ),
        sort=TaskRunSort.EXPECTED_START_TIME_DESC,
    )
    newest: dict[str, Any] = {}
    for task_run in task_runs:
        # The server can list a task run as Completed (its state_type) a moment before it
        # returns the state itself (state None): such a run is not recorded yet.
        if task_run.state is not None:
            newest.setdefault(task_run.name, task_run)
    where = f"run '{flow_run.name}' ({flow_run.id})"
    missing = [s for s in steps if s not in newest]
    if missing:
        raise TaskRunsNotRecordedError(
            f"{where} has no Completed task run for {', '.join(missing)}: the server records them a moment "
            "after the run ends, and never for a run in distributed mode or with persist_result off "
            f"(then, Fix: run the pipeline in process: planflow run {pipeline})"
        )
    outputs: dict[str, Any] = {}
    for step in steps:
        try:
            outputs[step] = await get_state_result(newest[step].state, retry_result_failure=False)
        except Exception as exc:  # missing file, a storage error, an unpicklable value...
            raise RunOutputsError(f"{where}: the output of step '{step}' cannot be read: {exc!r}") from exc
    return LoadedRun(str(flow_run.id), flow_run.name, flow_run.end_time, outputs)


async def read_latest_run(
    client: PrefectClient, pipeline: str, steps: Iterable[str], wait_seconds: float = 60.0
) -> LoadedRun:
    """The outputs of `steps` from the newest Completed run of `pipeline`, waiting up to
    `wait_seconds` for the server to record its task runs (a run read right after it ended);
    NoCompletedRunError without a run, RunOutputsError when they cannot be read."""
    steps = list(steps)
    deadline = time.monotonic() + wait_seconds
    while True:
        run = await latest_completed_run(client, pipeline)
        if run is None:
            raise NoCompletedRunError(no_run_message(pipeline))
        try:
            return await load_run(client, run, steps, pipeline)
        except TaskRunsNotRecordedError as exc:
            if time.monotonic() >= deadline:
                waited = f"waited {wait_seconds:g} s for the server to record them"
                raise TaskRunsNotRecordedError(f"{exc} ({waited})") from None
        await asyncio.sleep(0.25)
