"""planflow.workpools against the real test server: idempotent apply, template
updates, ResourcePool blocks, and the messages that say what to run."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from planflow.cli.workpools import workpools_app
from planflow.prefect import workpools
from planflow.prefect.jobvars import load_template
from planflow.prefect.workpools import WorkPoolError, apply_work_pools, require_pool, worker_status


def test_apply_creates_the_pools_with_planflows_templates(work_pools):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for name, pool_type in (("local-process", "process"), ("docker", "docker"), ("kubernetes", "kubernetes")):
            pool = client.read_work_pool(name)
            assert pool.type == pool_type
            assert pool.base_job_template == load_template(pool_type)


def test_apply_is_idempotent(work_pools):
    assert apply_work_pools(resource_pools=False) == [
        "local-process (process): unchanged",
        "docker (docker): unchanged",
        "kubernetes (kubernetes): unchanged",
    ]


def test_apply_updates_a_changed_template(work_pools):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    edited = load_template("docker")
    edited["variables"]["properties"]["image"]["default"] = "someone-elses:tag"
    with get_client(sync_client=True) as client:
        client.update_work_pool("docker", WorkPoolUpdate(base_job_template=edited))
    assert apply_work_pools(["docker"], resource_pools=False) == ["docker (docker): base job template updated"]
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("docker").base_job_template == load_template("docker")


def test_resource_pool_blocks_are_created_once(work_pools):
    from planflow.prefect.blocks import ResourcePool, local_pool_from_machine

    def delete(name):
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            doc = client.read_block_document_by_name(name, ResourcePool.get_block_type_slug())
            client.delete_block_document(doc.id)

    existed = set()
    for name in ("docker", "kubernetes"):
        try:
            ResourcePool.load(name)
            existed.add(name)
        except ValueError:
            pass
    try:
        lines = apply_work_pools(["docker", "kubernetes"])
        for name in ("docker", "kubernetes"):
            said = "kept (already exists)" if name in existed else "created"
            assert f"ResourcePool '{name}': {said}" in lines, lines
        docker, k8s = ResourcePool.load("docker"), ResourcePool.load("kubernetes")
        assert (docker.work_pool, docker.backup_pool) == ("docker", "local")
        if "docker" not in existed:  # the docker pool runs on this machine: its size
            machine = local_pool_from_machine()
            assert docker.capacity() == machine.capacity() and docker.cost_per_hour == 0.0
        assert (k8s.work_pool, k8s.backup_pool, k8s.cpu) == ("kubernetes", "docker", 32.0)
        ResourcePool.load("local")  # the backup exists too
        # with their concurrency limits: `planflow pools sync --check` finds nothing missing
        from planflow.prefect.limits import limit_drift

        made = {
            name: pool.capacity() for name, pool in (("docker", docker), ("kubernetes", k8s)) if name not in existed
        }
        missing, _ = limit_drift(made)
        assert missing == [], missing
        # A user's edit is kept.
        docker.cpu = 1.5
        docker.save("docker", overwrite=True)
        again = apply_work_pools(["docker"])
        assert "ResourcePool 'docker': kept (already exists)" in again
        assert ResourcePool.load("docker").cpu == 1.5
    finally:
        # Other tests plan over whatever pools exist: leave only what was there.
        for name in ("docker", "kubernetes"):
            if name not in existed:
                delete(name)


def test_missing_worker_package_says_what_to_install(work_pools, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "prefect_kubernetes" else real(name, *a)
    )
    with pytest.raises(WorkPoolError) as info:
        apply_work_pools(["kubernetes"], resource_pools=False)
    assert "needs the 'prefect-kubernetes' package" in str(info.value)
    assert "pip install prefect-kubernetes==0.8.0" in str(info.value)
    # all of planflow's pools (no names): the others are applied, this one skipped and said
    lines = apply_work_pools(resource_pools=False)
    assert "kubernetes (kubernetes): skipped, its worker needs prefect-kubernetes. Fix: pip install" in lines[0]
    assert [line.split(":")[0] for line in lines[1:]] == ["local-process (process)", "docker (docker)"]


def test_server_not_answering_is_reported(prefect_server):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with pytest.raises(WorkPoolError, match=r"127.0.0.1:9/api does not answer.*planflow server up"):
            apply_work_pools(resource_pools=False)


def test_unknown_pool_name_is_refused(prefect_server):
    with pytest.raises(WorkPoolError, match="unknown work pool"):
        apply_work_pools(["gpu-cluster"])


def test_deployment_on_a_pool_that_does_not_exist(work_pools):
    with pytest.raises(WorkPoolError) as info:
        require_pool("gpu-pool")
    message = str(info.value)
    assert "work pool 'gpu-pool' does not exist" in message
    assert "local-process" in message  # the pools that do exist
    assert "Fix: prefect work-pool create gpu-pool" in message


def test_missing_planflow_pool_points_at_apply(work_pools, monkeypatch):
    monkeypatch.setitem(
        workpools.POOLS,
        "gpu-docker",
        workpools.PoolDefinition("gpu-docker", "docker", "prefect_docker", "prefect-docker==0.7.4", "test"),
    )
    with pytest.raises(WorkPoolError, match="Fix: planflow workpools apply gpu-docker"):
        require_pool("gpu-docker")


def test_worker_not_running_says_how_to_start_one(work_pools):
    message = worker_status("kubernetes")
    assert "work pool 'kubernetes' has no worker running" in message
    assert "Start one with: planflow worker start kubernetes" in message


def test_worker_status_sees_a_live_worker(work_pools):
    """A worker's heartbeat (sent as real workers do) makes the pool online; an old one
    does not."""
    import datetime as dt

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="heartbeat-test", type="process"), overwrite=True)
        client._client.post(
            "/work_pools/heartbeat-test/workers/heartbeat",
            json={"name": "test-worker", "heartbeat_interval_seconds": 30},
        )
    try:
        assert "1 worker(s) online: test-worker" in worker_status("heartbeat-test")
        # paused (by the failover, or by hand): said, with the command that resumes it, and
        # `workpools status` exits 3 as for a pool that no worker serves
        with get_client(sync_client=True) as client:
            client.update_work_pool("heartbeat-test", WorkPoolUpdate(is_paused=True))
        paused = worker_status("heartbeat-test")
        assert "1 worker(s) online: test-worker" in paused and "; PAUSED: its flow runs wait" in paused, paused
        assert "Resume it with: prefect work-pool resume heartbeat-test" in paused
        shown = CliRunner().invoke(workpools_app, ["status", "heartbeat-test"])
        assert shown.exit_code == 3 and "PAUSED" in shown.output, shown.output
        with get_client(sync_client=True) as client:
            client.update_work_pool("heartbeat-test", WorkPoolUpdate(is_paused=False))
        later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
        stale = worker_status("heartbeat-test", now=later)
        assert "has no worker running (offline: test-worker" in stale
        assert "Start one with: planflow worker start heartbeat-test" in stale
    finally:
        with get_client(sync_client=True) as client:
            client.delete_work_pool("heartbeat-test")


def test_cli_apply_ls_status(work_pools):
    runner = CliRunner()
    applied = runner.invoke(workpools_app, ["apply", "local-process", "--no-resource-pools"])
    assert applied.exit_code == 0, applied.output
    assert "local-process (process): unchanged" in applied.output
    listed = runner.invoke(workpools_app, ["ls"])
    assert listed.exit_code == 0, listed.output
    assert "docker" in listed.output and "kubernetes" in listed.output
    status = runner.invoke(workpools_app, ["status", "kubernetes"])
    assert status.exit_code == 3
    assert "planflow worker start kubernetes" in status.output
    missing = runner.invoke(workpools_app, ["status", "nope"])
    assert missing.exit_code == 1
    assert "work pool 'nope' does not exist" in missing.output


def test_definitions_match_the_templates():
    """Each pool is filed under its own name and has a template of its type whose job
    configuration has a command to run."""
    for name, pool in workpools.POOLS.items():
        assert pool.name == name
        assert "command" in load_template(pool.type)["job_configuration"], name
