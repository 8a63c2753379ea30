"""Failover and rescale through the whole loop, every part real: `planflow demo heal`'s
scenarios (remediation/scenarios.py) against the session's Prefect server and monitoring
stack (exporter -> Prometheus -> Alertmanager -> bridge -> automation -> remediation flow
on the remediation worker). The scenarios only cause the trouble; these tests check what
the remediation did, from Prefect's records."""

from __future__ import annotations

import psutil
import pytest

from planflow.remediation import scenarios as heal

from tests.remediation.conftest import alert_driven_remediation


@pytest.fixture(scope="module")
def healing_stack(monitoring_stack, module_leftovers, process_pool_worker, tmp_path_factory):
    logs = tmp_path_factory.mktemp("heal")
    module_leftovers.pools += [heal.PRIMARY, heal.BUSY]  # the scenarios make them
    _, started = monitoring_stack
    with alert_driven_remediation(monitoring_stack, logs):
        yield {"logs": logs, "prometheus": started["prometheus"].url}


def test_failover_moves_the_stuck_run_to_the_backup_pool_and_resumes(healing_stack):
    from prefect.client.orchestration import get_client

    result = heal.failover_scenario(
        healing_stack["logs"], say=print, timeout=240, prometheus=healing_stack["prometheus"]
    )
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

    from planflow.prefect.blocks.alert_route import load_route
    from planflow.remediation.guard import Guard

    result = heal.rescale_scenario(
        healing_stack["logs"], say=print, timeout=300, prometheus=healing_stack["prometheus"]
    )
    assert result["raised_limit"] > 1, result
    assert result["extra_workers"], result
    assert result["run_states"] == ["COMPLETED"] * result["runs"], result
    assert result["scaled_back"]
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(heal.BUSY).concurrency_limit == 1
    assert Guard(load_route("PlanflowLateRunBacklog")).ledger(f"rescale:{heal.BUSY}") == {}
    running = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(name in " ".join(p.info["cmdline"] or []) for name in result["extra_workers"])
    ]
    assert not running, f"extra workers still running: pids {running}"
    print(result["timeline"])
