"""A flow run whose process dies silently (SIGKILL with its worker: no final state is
ever reported) is found by the proactive heartbeat automation, marked Crashed, and then
retried by the retry automation on a new worker; its finished components come back Cached.

Real parts: the Prefect server, the automations, process workers, the flow engine's own
heartbeats (PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30, Prefect's minimum), the remediation
worker. The automation's window is set to 45 s here (PLANFLOW_CRASH_AFTER_SECONDS) so the
test takes about two minutes instead of nine.
"""

from __future__ import annotations

import os
import signal
import uuid

import psutil
import pytest

from tests.remediation.conftest import apply_baseline, deploy_flaky, task_states_settled, wait_until


@pytest.fixture
def short_crash_window(module_leftovers, remediation_worker, monkeypatch):
    from planflow.remediation import automations

    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    monkeypatch.setenv(automations.CRASH_AFTER_ENV, "45")
    apply_baseline()
    yield 45
    monkeypatch.delenv(automations.CRASH_AFTER_ENV)
    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY")
    apply_baseline()


def descendants(pid: int) -> list[int]:
    return [child.pid for child in psutil.Process(pid).children(recursive=True)]


def test_silently_dead_run_is_marked_crashed_then_retried(module_leftovers, short_crash_window, tmp_path):
    from prefect.client.orchestration import get_client

    from planflow.ops.workers import start_worker, stop_process

    pool = module_leftovers.pool(f"silent-{uuid.uuid4().hex[:6]}")
    env = {**os.environ, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
    marker = tmp_path / "first-attempt"
    worker = start_worker(pool, tmp_path / "worker-1.log", env=env, name=f"{pool}-1")
    second = None
    try:
        deployment = deploy_flaky(f"remediation-flaky-{pool}", pool, ["planflow", "process"])
        with get_client(sync_client=True) as client:
            run = client.create_flow_run_from_deployment(
                deployment.id, parameters={"marker": str(marker), "how": "hang"}
            )
            wait_until(marker.exists, 120, 0.5, what="the first attempt to reach the hanging step")
            doomed = descendants(worker.pid)  # the flow run process (and what it started)
            os.killpg(worker.pid, signal.SIGKILL)  # worker and flow run die; nobody reports it
            for pid in doomed:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            worker.wait(timeout=10)
            assert client.read_flow_run(run.id).state.type.value == "RUNNING"
            second = start_worker(pool, tmp_path / "worker-2.log", env=env, name=f"{pool}-2")

            def completed():
                current = client.read_flow_run(run.id)
                return current if current.state.is_completed() else None

            try:
                done = wait_until(completed, 240, 2, what=f"{run.name} to be crashed, retried and completed")
            except AssertionError:
                states = [(s.name, s.message) for s in client.read_flow_run_states(run.id)]
                pytest.fail(f"{run.name} did not complete: states {states}")
            states = client.read_flow_run_states(run.id)
            crashed = [s for s in states if s.name == "Crashed"]
            assert crashed and "no heartbeat for 45 s" in (crashed[0].message or ""), [
                (s.name, s.message) for s in states
            ]
            assert "AwaitingRetry" in [s.name for s in states]
            assert done.run_count >= 2
            task_states_settled(client, run.id)  # prepare and summarise read back, not recomputed
    finally:
        stop_process(worker, timeout=5)
        if second is not None:
            stop_process(second, timeout=10)
