"""Failover end to end on Docker, every part real: a pipeline runs on the `docker` pool,
its Docker worker is killed mid-run, the run queued behind it is stuck; the server marks
the worker offline, the exporter reports the pool not ready, Prometheus fires
PlanflowWorkPoolNotReady, Alertmanager posts it to the bridge, the automation starts the
failover flow: the docker pool is paused, the stuck run cancelled and resubmitted on
`image-classification/image-classification-process` (ResourcePool `docker` -> backup
`local`), where it completes. A Docker worker comes back -> the pool is resumed."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

from tests.deployments.conftest import IN_CI, PREFECT, PREFECT_FILE, run_cli
from tests.remediation.conftest import alert_driven_remediation, wait_until


def private_network_namespace() -> bool:
    """This process runs in a network namespace of its own with loopback only (e.g.
    `unshare --net`): the flow-run containers (host network: the Docker engine's
    namespace, which has its bridge) cannot reach the Prefect server on this loopback."""
    return set(psutil.net_if_addrs()) <= {"lo"}


@pytest.fixture
def containers_reach_the_server() -> None:
    if private_network_namespace():
        message = (
            "this test runs in a private network namespace, so the flow-run containers (host "
            "network) cannot reach its Prefect server. Fix: run it in the Docker engine's namespace"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def docker_setup(
    containers_reach_the_server,
    docker_image,
    work_pools,
    monitoring_stack,
    remediation_applied,
    process_pool_worker,
    tmp_path,
):
    from prefect.client.orchestration import get_client

    from planflow.prefect.blocks import ResourcePool

    deploy = run_cli(
        [
            PREFECT,
            "--no-prompt",
            "deploy",
            "--prefect-file",
            str(PREFECT_FILE),
            "--name",
            "image-classification-docker",
            "--name",
            "image-classification-process",
        ]
    )
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    created = False
    try:
        ResourcePool.load("docker")
    except ValueError:
        from planflow.prefect.blocks.resource_pool import local_pool_from_machine

        machine = local_pool_from_machine("docker")
        ResourcePool(work_pool="docker", cpu=machine.cpu, mem_gib=machine.mem_gib, backup_pool="local").save("docker")
        created = True
    try:
        with alert_driven_remediation(monitoring_stack, tmp_path):
            yield tmp_path
    finally:
        from prefect.client.schemas.actions import WorkPoolUpdate

        from planflow.prefect.blocks.alert_route import load_route
        from planflow.remediation.guard import Guard

        with get_client(sync_client=True) as client:
            if created:
                client.delete_block_document(ResourcePool.load("docker")._block_document_id)
            client.update_work_pool("docker", WorkPoolUpdate(is_paused=False))
        Guard(load_route("PlanflowWorkPoolNotReady"), shared=True).reset("failover:docker")


def _docker_worker(log: Path) -> subprocess.Popen:
    """A Docker worker reporting every 2 s, so that the server notices its death soon."""
    from planflow.ops.workers import start_worker

    return start_worker(
        "docker",
        log,
        pool_type="docker",
        name=f"test-docker-{os.urandom(3).hex()}",
        heartbeat_seconds=2,
        query_seconds=1,
    )


def test_docker_worker_killed_mid_run_fails_over_to_the_process_pool(docker_setup):
    from prefect.client.orchestration import get_client

    from planflow.remediation.automations import stop_process
    from planflow.remediation.heal_watch import remediation_settled
    from planflow.remediation.pools import live_workers

    logs = docker_setup
    params = {"augment": 0, "test_size": 0.5}
    worker = _docker_worker(logs / "docker-worker-1.log")
    with get_client(sync_client=True) as client:
        docker_dep = client.read_deployment_by_name("image-classification/image-classification-docker")
        try:
            wait_until(lambda: live_workers(client, "docker"), 60, what="the docker worker")
            # The docker pool had no worker until now, so the stack may already have failed it
            # over (paused): once that remediation settled, the operator resumes the pool.
            from prefect.client.schemas.actions import WorkPoolUpdate

            wait_until(lambda: remediation_settled(client), 120, 1, what="earlier remediation runs to finish")

            client.update_work_pool("docker", WorkPoolUpdate(is_paused=False))
            since = datetime.now(UTC) - timedelta(seconds=2)
            first = client.create_flow_run_from_deployment(docker_dep.id, parameters=params)
            try:
                wait_until(
                    lambda: client.read_flow_run(first.id).state.type.value in ("RUNNING", "COMPLETED"),
                    120,
                    1,
                    what="the first run to start in its container",
                )
            except AssertionError:
                states = [(s.name, s.message) for s in client.read_flow_run_states(first.id)]
                pytest.fail(
                    f"first run never ran: states {states}; pool paused "
                    f"{client.read_work_pool('docker').is_paused}; workers {live_workers(client, 'docker')}"
                )
        finally:
            os.killpg(worker.pid, 9)  # the Docker worker dies mid-run
            worker.wait(timeout=10)
        stuck = client.create_flow_run_from_deployment(docker_dep.id, parameters=params)

        from planflow.remediation.heal_watch import HealError, wait_about

        try:  # on a timeout, say what the alerts and remediations about the pool did
            wait_about(
                "docker",
                since,
                lambda: client.read_work_pool("docker").is_paused,
                180,
                "the failover automation to pause the docker pool (alert path)",
                2,
            )
            wait_about(
                "docker",
                since,
                lambda: client.read_flow_run(stuck.id).state.type.value == "CANCELLED",
                60,
                "the stuck run to be cancelled",
                1,
            )
        except HealError as exc:
            pytest.fail(str(exc))
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

        def moved():
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["failover"])), limit=50
            )
            return [r for r in runs if r.name == f"{stuck.name}-failover"]

        [resubmitted] = wait_until(moved, 60, 1, what="the resubmitted run")
        deployment = client.read_deployment(resubmitted.deployment_id)
        assert deployment.name == "image-classification-process"
        assert resubmitted.parameters["local_pool"] == "local"
        done = wait_until(
            lambda: (r := client.read_flow_run(resubmitted.id)).state.is_final() and r,
            240,
            2,
            what="the resubmitted run to finish on the process pool",
        )
        assert done.state.is_completed(), done.state

        back = _docker_worker(logs / "docker-worker-2.log")  # the Docker worker comes back
        try:
            wait_about(
                "docker",
                since,
                lambda: not client.read_work_pool("docker").is_paused,
                150,
                "the docker pool to be resumed after the alert resolved",
                2,
            )
        except HealError as exc:
            pytest.fail(str(exc))
        finally:
            stop_process(back)
