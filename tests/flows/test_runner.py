"""The run flow against a real Prefect server: artifacts, failures, retries."""

from __future__ import annotations

import asyncio
import json
import stat
from uuid import UUID

import pytest
import toy_dags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogWorker

from planflow import to_flow
from planflow.ops.processes import wait_until
from planflow.runtime.events import Reporter, subscribe
from planflow.runtime.runner import PipelineRunError, add_listener
from planflow.settings import StatePaths

pytestmark = pytest.mark.usefixtures("registered_blocks")


async def _artifacts(flow_run_id: str):
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)]))
        )


async def _task_runs(flow_run_id: str):
    async with get_client() as client:
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))


def test_diamond_runs_with_progress_summary_and_totals():
    events = []
    remove = add_listener(lambda event, record: events.append((event, record.step)))
    try:
        result = to_flow(toy_dags.diamond)(**{"n": 3})
    finally:
        remove()
    assert result["params"] == {"n": 3, "factor": 2.0}
    assert {s["state"] for s in result["steps"].values()} == {"Completed"}
    assert result["steps"]["report"]["metrics"] == {"value": 9.0}  # 0+1+2 + 2*(0+1+2)
    assert ("completed", "report") in events and events.index(("started", "report")) > events.index(
        ("completed", "total")
    )

    artifacts = {a.key: a for a in asyncio.run(_artifacts(result["flow_run_id"])) if a.key}
    # the duration history: one record per completed component, linked to the run
    history = sorted(artifacts.pop(k).data["component"] for k in list(artifacts) if k.startswith("planflow-history-"))
    assert history == ["numbers", "report", "scaled", "total"]
    # `-eta` is written only when a re-plan moved the ETA (other runs on the session's
    # server came or went): legitimate, but not every time
    assert set(artifacts) - {"toy-diamond-eta"} == {
        "toy-diamond-progress",
        "toy-diamond-plan",
        "toy-diamond-plan-figures",
        "toy-diamond-planned-vs-actual",
        "toy-diamond-summary",
        "toy-diamond-totals",
    }
    assert float(artifacts["toy-diamond-progress"].data) == pytest.approx(100.0)
    rows = _table(artifacts["toy-diamond-summary"])
    assert [r["component"] for r in rows][0] == "numbers" and rows[-1]["component"] == "report"
    assert rows[-1]["key_metric"] == "value=9"
    assert "critical path (s) | 0.6" in artifacts["toy-diamond-totals"].data

    plan_rows = _table(artifacts["toy-diamond-plan"])
    assert {r["component"]: r["estimate"] for r in plan_rows}["numbers"] in (
        "declared",
        "history: median of 1 run",
    ) or plan_rows[0]["estimate"].startswith("history")
    figures = artifacts["toy-diamond-plan-figures"].data
    assert "| planned makespan |" in figures and "data:image/png;base64," in figures
    actual = artifacts["toy-diamond-planned-vs-actual"].data
    assert "Makespan achieved" in actual and "| report | local | Completed |" in actual
    assert result["plan"]["makespan_s"] > 0 and result["plan"]["status"] in ("optimal", "feasible", "heuristic")
    # its picture beside the state folder, the user's only (were 0755 and 0644)
    picture = StatePaths.discover().home / "plans" / f"{result['flow_run_id']}.png"
    assert picture.read_bytes()[:4] == b"\x89PNG"
    assert stat.S_IMODE(picture.stat().st_mode) == 0o600 and stat.S_IMODE(picture.parent.stat().st_mode) == 0o700


def _table(artifact):
    data = artifact.data
    return data if isinstance(data, list) else json.loads(data)


def test_a_failing_step_fails_the_run_naming_the_step():
    with pytest.raises(PipelineRunError) as caught:
        to_flow(toy_dags.failing)(**{"n": 2})
    message = str(caught.value)
    assert "step 'broken' of pipeline 'toy-failing' failed: ValueError: cannot use 2 numbers" in message


def test_a_retried_run_does_not_recompute_finished_components():
    result = to_flow(toy_dags.flaky_pair)(**{"tag": "retry"})
    assert result["steps"]["flaky"]["state"] == "Completed"
    home = __import__("os").environ["PLANFLOW_HOME"]
    from pathlib import Path

    assert Path(home, "count-expensive-retry").read_text() == "1"  # computed once
    assert Path(home, "count-flaky-retry").read_text() == "2"  # failed, then passed
    seen: list[str] = []

    def expensive_states() -> bool:  # task-run states reach the server as events, a moment later
        runs = asyncio.run(_task_runs(result["flow_run_id"]))
        seen[:] = sorted(r.state.name for r in runs if r.name == "expensive")
        return seen == ["Cached", "Completed"]

    assert wait_until(expensive_states, 30), seen  # second attempt read the persisted result


def test_a_steps_task_retries_are_in_its_summary_and_the_history_learns_its_last_attempt():
    result = to_flow(toy_dags.retried_step)(**{"tag": "attempts"})
    step = result["steps"]["shaky"]
    assert step["state"] == "Completed" and step["attempts"] == 2
    assert step["seconds"] > 1.0  # both attempts and Prefect's 1 s retry delay
    artifacts = asyncio.run(_artifacts(result["flow_run_id"]))
    learned = [a.data for a in artifacts if a.key and a.key.startswith("planflow-history-shaky-")]
    assert len(learned) == 1
    data = learned[0] if isinstance(learned[0], dict) else json.loads(learned[0])
    assert 0.1 <= data["seconds"] < 0.6, data  # the last attempt's time, not the retry's delay


def test_a_new_run_computes_afresh():
    to_flow(toy_dags.flaky_pair)(**{"tag": "fresh"})
    to_flow(toy_dags.flaky_pair)(**{"tag": "fresh"})
    from pathlib import Path

    assert Path(__import__("os").environ["PLANFLOW_HOME"], "count-expensive-fresh").read_text() == "2"


class _BrokenReporter(Reporter):
    def on_step(self, event):
        raise RuntimeError(f"cannot show {event.record.step}")


async def _logs(flow_run_id: str) -> list[str]:
    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(flow_run_id)])), limit=200
        )
    return [log.message for log in logs]


def test_a_reporter_that_fails_does_not_fail_the_run_and_is_named_in_its_log():
    remove = subscribe(_BrokenReporter())
    try:
        result = to_flow(toy_dags.diamond)(n=2)
    finally:
        remove()
    assert {s["state"] for s in result["steps"].values()} == {"Completed"}
    keys = {a.key for a in asyncio.run(_artifacts(result["flow_run_id"])) if a.key}
    assert {"toy-diamond-summary", "toy-diamond-totals", "toy-diamond-planned-vs-actual"} <= keys
    APILogWorker.drain_all(timeout=30)
    messages = asyncio.run(_logs(result["flow_run_id"]))
    first = [m for m in messages if m.startswith("reporter _BrokenReporter failed in")]
    assert len(first) == 1  # once, with its traceback; then only counted
    assert first[0].startswith("reporter _BrokenReporter failed in on_step: RuntimeError: cannot show numbers")
    assert "Traceback" in first[0]
    assert "reporter _BrokenReporter failed on 8 event(s) of this run (the run went on)" in messages


def test_fifo_runs_without_plan_artifacts_and_reports_progress():
    result = to_flow(toy_dags.diamond)(n=2, policy="fifo")
    assert result["plan"] is None and result["policy"] == "fifo"
    artifacts = {a.key: a for a in asyncio.run(_artifacts(result["flow_run_id"])) if a.key}
    # the duration history: one record per completed component, linked to the run
    history = sorted(artifacts.pop(k).data["component"] for k in list(artifacts) if k.startswith("planflow-history-"))
    assert history == ["numbers", "report", "scaled", "total"]
    assert set(artifacts) == {"toy-diamond-progress", "toy-diamond-summary", "toy-diamond-totals"}
    assert float(artifacts["toy-diamond-progress"].data) == pytest.approx(100.0)
