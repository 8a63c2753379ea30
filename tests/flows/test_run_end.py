"""A run's last reporting goes on after its final state (run_end.py), against a real
Prefect server: the end's artifacts follow the Completed or Failed state, and exist when
the flow's call returns; a flow of one's own waits for them before it returns; a run
ended by a termination signal still reports what its steps did."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
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


TERMINATED_RUN = """
import os, signal, time
from planflow import Pipeline, component, to_flow

@component(cpu=1, mem_gib=0.25, est_seconds=0.2)
def first(n: int = 2) -> int:
    return n

@component(cpu=1, mem_gib=0.25, est_seconds=0.2)
def terminated(first: int) -> int:
    os.kill(os.getpid(), signal.SIGTERM)  # as a worker's stop or a node's drain sends it
    time.sleep(1)
    return first

to_flow(Pipeline("toy-terminated", [first, terminated]))()
"""


def test_a_run_ended_by_a_termination_signal_still_reports_what_its_steps_did(tmp_path):
    script = tmp_path / "terminated.py"
    script.write_text(TERMINATED_RUN)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode != 0, done.stderr[-2000:]
    flow_run_id = UUID(re.findall(r"/runs/flow-run/([0-9a-f-]{36})", done.stderr)[-1])
    found = {a.key: a for a in asyncio.run(_artifacts(flow_run_id))}
    for what in ("summary", "totals", "planned-vs-actual"):
        assert f"toy-terminated-{what}" in found, (sorted(found), done.stderr[-2000:])
    rows = json.loads(found["toy-terminated-summary"].data)
    states = {row["component"]: row["state"] for row in rows}
    assert states["first"] == "Completed", states
    assert states["terminated"] == "Crashed", states  # running when the signal came
    assert "reporter" not in done.stderr, done.stderr[-2000:]  # no reporter failed on the partial records
