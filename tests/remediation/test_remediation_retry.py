"""Retry end to end: a deployment run fails (or crashes) on its first attempt; Prefect's
own Failed/Crashed event starts the retry automation; the SAME flow run runs again on
the process worker and completes, with the components finished before read back Cached."""

from __future__ import annotations

from datetime import UTC

import pytest

from tests.remediation.conftest import deploy_flaky, task_states_settled, wait_until


@pytest.fixture(scope="module")
def flaky_deployment(module_leftovers, process_pool_worker, remediation_worker):
    return deploy_flaky("remediation-flaky-process", "local-process", ["planflow", "process"])


def _remediation_events(flow_run_id: str, phase: str = "outcome") -> list[dict]:
    import os
    from datetime import datetime, timedelta

    from planflow.monitoring.events import read_events
    from planflow.monitoring.prefect_api import auth_headers

    events = read_events(
        os.environ["PREFECT_API_URL"].rstrip("/"),
        None,
        "planflow.remediation.",
        datetime.now(UTC) - timedelta(hours=1),
        auth_headers(),
    )
    return [
        e
        for e in events
        if e["event"] == f"planflow.remediation.{phase}"
        and any(r["prefect.resource.id"] == f"prefect.flow-run.{flow_run_id}" for r in e.get("related", []))
    ]


@pytest.fixture(scope="module")
def untagged_deployment(flaky_deployment):
    """A deployment made as the README's prefect.yaml makes it: no tags. Its runs get the
    `planflow` tag at their start; the server kept their first event's tags for 5 minutes,
    so their Failed event had none and no automation saw it."""
    return deploy_flaky("remediation-flaky-untagged", "local-process", [])


@pytest.mark.parametrize(
    ("how", "tagged"), [("raise", True), ("exit", True), ("kill", True), ("raise", False)], ids=str
)
def test_failed_or_crashed_run_is_retried_once_and_finished_components_are_cached(
    flaky_deployment, untagged_deployment, tmp_path, how, tagged
):
    from prefect.client.orchestration import get_client

    marker = tmp_path / f"first-attempt-{how}"
    deployment = flaky_deployment if tagged else untagged_deployment
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"marker": str(marker), "how": how})
        assert tagged or "planflow" not in run.tags  # untagged until it starts

        def final():
            current = client.read_flow_run(run.id)
            return current if current.state and current.state.is_completed() else None

        try:
            done = wait_until(final, 240, 1.0, what=f"flow run {run.name} to complete after a retry")
        except AssertionError:
            states = [s.name for s in client.read_flow_run_states(run.id)]
            pool = client.read_work_pool("local-process")
            pytest.fail(
                f"{run.name} never completed: states {states}; local-process paused={pool.is_paused} "
                f"status={pool.status}; remediation outcomes {_remediation_events(str(run.id))}"
            )
        assert marker.exists()  # the first attempt happened and failed
        assert done.run_count >= 2, done.run_count
        history = [s.name for s in client.read_flow_run_states(run.id)]
        assert "AwaitingRetry" in history, history
        assert ("Failed" if how == "raise" else "Crashed") in history, history
        # one attempt counted per failure: a SIGKILL is reported Crashed twice (runner, then worker)
        retries = [s.message for s in client.read_flow_run_states(run.id) if s.name == "AwaitingRetry"]
        assert retries and all(m.startswith("planflow retry 1/") for m in retries), retries
        task_states_settled(client, run.id)  # prepare and summarise read back, not recomputed
    outcomes = wait_until(lambda: _remediation_events(str(run.id)), 30, what="the remediation outcome event")
    assert any(e["payload"]["outcome"] == "succeeded" for e in outcomes), outcomes
