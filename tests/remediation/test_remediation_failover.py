"""Failover against the real Prefect server and a real process worker: a pool whose
worker is gone (here: never started) gets paused, its stuck run cancelled and resubmitted
on the backup pool's deployment of the same pipeline, where it completes; the resolved
alert resumes the pool."""

from __future__ import annotations

import uuid

import pytest

from tests.remediation.conftest import FLAKY_PIPELINES, create_process_pool, deploy_flaky, start_pool_worker, wait_until


@pytest.fixture
def primary_pool(process_pool_worker, monkeypatch):
    from planflow.prefect.blocks import ResourcePool

    monkeypatch.setenv("PLANFLOW_PIPELINES", FLAKY_PIPELINES)
    name = f"fo-{uuid.uuid4().hex[:6]}"
    create_process_pool(name)
    ResourcePool(work_pool=name, cpu=2, mem_gib=2, backup_pool="local").save(name)
    yield name
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.delete_block_document(ResourcePool.load(name)._block_document_id)


def test_failover_pauses_cancels_resubmits_on_backup_and_resume_on_resolved(primary_pool, tmp_path):
    from prefect.client.orchestration import get_client

    from planflow.remediation.actions import failover, live_workers
    from planflow.remediation.automations import stop_process

    primary = deploy_flaky(f"remediation-flaky-{primary_pool}", primary_pool, ["planflow", "docker"])
    deploy_flaky("remediation-flaky-process", "local-process", ["planflow", "process"])
    event_id = str(uuid.uuid4())
    with get_client(sync_client=True) as client:
        stuck = client.create_flow_run_from_deployment(primary.id, parameters={"seed": 3})
        labels = {"alertname": "PlanflowWorkPoolNotReady", "work_pool": primary_pool, "severity": "critical"}
        result = failover(
            event_id=event_id,
            event="planflow.alert.firing",
            resource_id=f"prefect.work-pool.{primary_pool}",
            labels=labels,
        )
        assert result["outcome"] == "succeeded", result
        assert client.read_work_pool(primary_pool).is_paused
        assert client.read_flow_run(stuck.id).state.type.value == "CANCELLED"
        assert result["backup_work_pool"] == "local-process"
        [moved] = result["resubmitted"]
        assert moved["deployment"] == "remediation-flaky/remediation-flaky-process"
        replan = result["replans"]["remediation-flaky"]
        assert replan["pools"] == ["local"] and replan["makespan_s"] > 0, replan
        new = client.read_flow_run(moved["flow_run_id"])
        assert new.parameters["local_pool"] == "local" and new.parameters["seed"] == 3
        done = wait_until(
            lambda: (r := client.read_flow_run(new.id)).state.is_final() and r,
            180,
            1,
            what="the resubmitted run to finish",
        )
        assert done.state.is_completed(), done.state

        again = failover(
            event_id=str(uuid.uuid4()),
            event="planflow.alert.firing",
            resource_id=f"prefect.work-pool.{primary_pool}",
            labels=labels,
        )
        assert again["outcome"] == "skipped" and not again.get("resubmitted"), again  # guard: once

        # Pausing a pool without a worker resolves "not ready" by itself: no resume yet.
        early = failover(
            event_id=str(uuid.uuid4()),
            event="planflow.alert.resolved",
            resource_id=f"prefect.work-pool.{primary_pool}",
            labels=labels,
        )
        assert early["outcome"] == "skipped" and "no live worker" in early["reason"], early
        assert client.read_work_pool(primary_pool).is_paused

        worker = start_pool_worker(primary_pool, tmp_path / "worker.log")  # the worker is back
        try:
            wait_until(lambda: live_workers(client, primary_pool), 60, what="a worker on the pool")
            resolved = failover(
                event_id=str(uuid.uuid4()),
                event="planflow.alert.resolved",
                resource_id=f"prefect.work-pool.{primary_pool}",
                labels=labels,
            )
            assert resolved["outcome"] == "succeeded", resolved
            assert not client.read_work_pool(primary_pool).is_paused
        finally:
            stop_process(worker)


def test_resolved_does_not_resume_a_pool_failover_did_not_pause(registered_blocks):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    from planflow.remediation.actions import failover

    name = f"manual-{uuid.uuid4().hex[:6]}"
    create_process_pool(name)
    with get_client(sync_client=True) as client:
        client.update_work_pool(name, WorkPoolUpdate(is_paused=True))  # paused by a person
        result = failover(
            event="planflow.alert.resolved",
            work_pool=name,
            labels={"alertname": "PlanflowWorkPoolNotReady", "work_pool": name},
        )
        assert result["outcome"] == "skipped", result
        assert client.read_work_pool(name).is_paused
