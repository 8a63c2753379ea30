"""The deployment tests' wait for a flow run: it returns the run once final, and fails
loudly (the run, its last state, the timeout) when the run never finishes."""

from __future__ import annotations

import time

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Completed, Scheduled

from tests.deployments.conftest import wait_for_final_state


@flow(name="planflow-wait-check")
def never_run() -> None:
    """Only its flow runs are made here; nothing executes it."""


@pytest.fixture
def scheduled_run(prefect_server):
    """A flow run of no deployment, Scheduled: no worker will ever take it."""
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(never_run, name="planflow-wait-check-run", state=Scheduled())
    yield run
    with get_client(sync_client=True) as client:
        client.delete_flow_run(run.id)


def test_a_run_that_never_finishes_fails_the_test_with_its_name_state_and_timeout(scheduled_run):
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as caught:
        wait_for_final_state(scheduled_run.id, timeout=2)
    assert time.monotonic() - started < 30  # bounded by the timeout, not by the default 240 s
    message = str(caught.value)
    assert f"flow run 'planflow-wait-check-run' ({scheduled_run.id})" in message
    assert "did not reach a final state within 2 s; its last state: SCHEDULED (Scheduled" in message


def test_a_final_run_is_returned(scheduled_run):
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(scheduled_run.id, Completed(), force=True)
    run = wait_for_final_state(scheduled_run.id, timeout=30)
    assert run.id == scheduled_run.id and run.state.is_completed()
