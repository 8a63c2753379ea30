"""A run's last reporting goes on after its final state (run_end.py), against a real
Prefect server: the end's artifacts follow the Completed or Failed state, and exist when
the flow's call returns; a flow of one's own waits for them before it returns."""

from __future__ import annotations

import asyncio
from datetime import datetime
from uuid import UUID

import pytest
import toy_dags
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from planflow import to_flow
from planflow.runtime import run_end
from planflow.runtime.reporting import artifact_key
from planflow.runtime.runner import run_pipeline

pytestmark = pytest.mark.usefixtures("registered_blocks")


async def _artifacts(flow_run_id: UUID):
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def end_artifacts_created(state, pipeline) -> dict[str, datetime]:
    """When the run's end artifacts (summary, totals, planned versus actual) were created."""
    keys = {artifact_key(pipeline, what) for what in ("summary", "totals", "planned-vs-actual")}
    found = asyncio.run(_artifacts(state.state_details.flow_run_id))
    return {a.key: a.created for a in found if a.key in keys}


def test_the_end_artifacts_follow_the_completed_state_and_exist_when_the_call_returns():
    state = to_flow(toy_dags.diamond)(n=2, return_state=True)
    assert state.is_completed()
    created = end_artifacts_created(state, toy_dags.diamond)
    assert len(created) == 3, created  # written before the call returned
    assert all(at > state.timestamp for at in created.values()), (state.timestamp, created)
    assert str(state.state_details.flow_run_id) not in run_end._pending  # nothing left waiting


def test_a_failed_run_s_end_artifacts_follow_its_failed_state():
    state = to_flow(toy_dags.failing)(n=2, return_state=True)
    assert state.is_failed()
    created = end_artifacts_created(state, toy_dags.failing)
    assert len(created) == 3, created
    assert all(at > state.timestamp for at in created.values()), (state.timestamp, created)
    assert str(state.state_details.flow_run_id) not in run_end._pending


def test_a_flow_of_one_s_own_waits_for_its_reporting_before_it_returns():
    @flow(name="own-flow-running-a-pipeline")
    def own(n: int = 2) -> dict:
        return run_pipeline(toy_dags.diamond, {"n": n})

    state = own(return_state=True)
    assert state.is_completed()
    assert not run_end.hooked(own)
    created = end_artifacts_created(state, toy_dags.diamond)
    assert len(created) == 3, created
    assert all(at < state.timestamp for at in created.values()), (state.timestamp, created)


def test_to_flow_s_flows_call_the_hook_on_every_final_state_unless_a_hook_list_was_replaced():
    run = to_flow(toy_dags.diamond)
    assert run_end.hooked(run)
    for kind in ("on_completion", "on_failure", "on_crashed", "on_cancellation"):
        assert not run_end.hooked(to_flow(toy_dags.diamond, **{kind: [lambda f, r, s: None]})), kind
    run.on_completion(lambda f, r, s: None)  # a hook of one's own on completion only
    assert len(run.on_completion_hooks) == 3 and len(run.on_failure_hooks) == 2
