"""Failover and rescale through the whole loop, every part real: `planflow demo heal`'s
scenarios (monitoring/heal.py) against the session's Prefect server and monitoring stack
(exporter -> Prometheus -> Alertmanager -> bridge -> automation -> remediation flow on the
remediation worker). The scenarios only cause the trouble; these tests check what the
remediation did, from Prefect's records."""

from __future__ import annotations

import pytest

from tests.remediation.conftest import alert_driven_remediation


@pytest.fixture(scope="module")
def healing_stack(monitoring_stack, remediation_applied, process_pool_worker, tmp_path_factory):
    logs = tmp_path_factory.mktemp("heal")
    with alert_driven_remediation(monitoring_stack, logs):
        yield logs


def test_failover_moves_the_stuck_run_to_the_backup_pool_and_resumes(healing_stack):
    from prefect.client.orchestration import get_client

    from planflow.remediation import scenarios as heal

    result = heal.failover_scenario(healing_stack, say=print, timeout=240)
    with get_client(sync_client=True) as client:
        stuck = client.read_flow_run(result["stuck_run"])
        assert stuck.state.type.value == "CANCELLED", stuck.state
        assert "failover" in (stuck.state.message or ""), stuck.state.message
        moved = client.read_flow_run(result["resubmitted_run"])
        assert moved.state.is_completed(), moved.state
        assert client.read_deployment(moved.deployment_id).work_pool_name == heal.BACKUP_WORK_POOL
        assert moved.parameters["local_pool"] == "local"  # planned with the backup's capacities
        assert not client.read_work_pool(heal.PRIMARY).is_paused
    assert result["resumed"]
    print(result["timeline"])


def test_rescale_raises_the_limit_adds_workers_drains_and_scales_back(healing_stack):
    from prefect.client.orchestration import get_client

    from planflow.ops.workers import is_our_process
    from planflow.remediation import scenarios as heal

    result = heal.rescale_scenario(healing_stack, say=print, timeout=300)
    assert result["raised_limit"] > 1, result
    assert result["extra_workers"], result
    assert result["run_states"] == ["COMPLETED"] * result["runs"], result
    assert result["scaled_back"]
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(heal.BUSY).concurrency_limit == 1
    from planflow.prefect.blocks.alert_route import Guard, load_route

    assert Guard(load_route("PlanflowLateRunBacklog")).ledger(f"rescale:{heal.BUSY}") == {}
    from pathlib import Path

    running = [
        p.name
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and any(is_our_process(int(p.name), name) for name in result["extra_workers"])
    ]
    assert not running, f"extra workers still running: pids {running}"
    print(result["timeline"])
