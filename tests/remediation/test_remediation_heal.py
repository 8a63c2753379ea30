"""Failover and rescale through the whole loop, every part real: `planflow demo heal`'s
scenarios (remediation/scenarios.py) against the session's Prefect server and monitoring
stack (exporter -> Prometheus -> Alertmanager -> bridge -> automation -> remediation flow
on the remediation worker). The scenarios only cause the trouble; these tests check what
the remediation did, from Prefect's records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psutil
import pytest

from planflow.remediation import scenarios as heal

from tests.remediation.conftest import alert_driven_remediation


def assert_nothing_left(result: dict, pool: str, since: datetime) -> list[str]:
    """After a scenario: nothing left behind (issue 13: heal-primary stayed paused, a
    second failover ran after the scenario ended, re-checks filled the runs list).
    Returns the remediation actions about `pool` since `since`, in order."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from planflow.remediation.heal_cleanup import remediations_about
    from planflow.remediation.heal_watch import events_about

    assert result["left_behind"] == [], result["left_behind"]
    with get_client(sync_client=True) as client:
        with pytest.raises(ObjectNotFound):  # not paused, not alerted on: gone with its deployments
            client.read_work_pool(pool)
        assert remediations_about(client, [pool]) == []  # nothing running or scheduled about it
    actions = [
        e["payload"].get("what")
        for e in sorted(
            events_about("planflow.remediation.action", f"prefect.work-pool.{pool}", since), key=lambda e: e["occurred"]
        )
    ]
    return actions


@pytest.fixture(scope="module")
def healing_stack(monitoring_stack, module_leftovers, process_pool_worker, tmp_path_factory):
    logs = tmp_path_factory.mktemp("heal")
    module_leftovers.pools += [heal.PRIMARY, heal.BUSY]  # the scenarios make them
    _, started = monitoring_stack
    with alert_driven_remediation(monitoring_stack, logs):
        yield {"logs": logs, "prometheus": started["prometheus"].url}


def test_failover_moves_the_stuck_run_to_the_backup_pool_and_resumes(healing_stack):
    from prefect.client.orchestration import get_client

    since = datetime.now(UTC) - timedelta(seconds=5)
    result = heal.failover_scenario(
        healing_stack["logs"], say=print, timeout=240, prometheus=healing_stack["prometheus"]
    )
    with get_client(sync_client=True) as client:
        stuck = client.read_flow_run(result["stuck_run"])
        assert stuck.state.type.value == "CANCELLED", stuck.state
        assert "failover" in (stuck.state.message or ""), stuck.state.message
        moved = client.read_flow_run(result["resubmitted_run"])
        assert moved.state.is_completed(), moved.state
        assert moved.parameters["local_pool"] == "local"  # planned with the backup's capacities
        assert moved.work_pool_name == heal.BACKUP_WORK_POOL
    assert result["resumed"]
    actions = assert_nothing_left(result, heal.PRIMARY, since)
    # The failover's resume is the last thing any remediation did to the pool: no pause
    # after it (the set-up may have its own pause and resume: a pool seen before its
    # worker's first heartbeat; two resolved alerts may both resume).
    last_pause = len(actions) - 1 - actions[::-1].index("pause-work-pool")
    assert "resubmit" in actions[last_pause:] and actions[-1] == "resume-work-pool", actions
    print(result["timeline"])


def test_rescale_raises_the_limit_adds_workers_drains_and_scales_back(healing_stack):
    from planflow.prefect.blocks.alert_route import load_route
    from planflow.remediation.guard import Guard

    since = datetime.now(UTC) - timedelta(seconds=5)
    result = heal.rescale_scenario(
        healing_stack["logs"], say=print, timeout=300, prometheus=healing_stack["prometheus"]
    )
    assert result["raised_limit"] > 1, result
    assert result["extra_workers"], result
    assert result["run_states"] == ["COMPLETED"] * result["runs"], result
    assert result["scaled_back"]
    actions = assert_nothing_left(result, heal.BUSY, since)
    assert "pause-work-pool" not in actions, actions  # no failover of the worker-less pool afterwards
    assert Guard(load_route("PlanflowLateRunBacklog")).ledger(f"rescale:{heal.BUSY}") == {}
    running = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(name in " ".join(p.info["cmdline"] or []) for name in result["extra_workers"])
    ]
    assert not running, f"extra workers still running: pids {running}"
    print(result["timeline"])
