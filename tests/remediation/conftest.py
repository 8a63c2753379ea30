"""Fixtures of the remediation tests: real Prefect server, real workers (process pools),
the automations applied as `planflow automations apply` does."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """heal.wait_for, failing the test (AssertionError) on a timeout."""
    from planflow.remediation.scenarios import HealError, wait_for

    try:
        return wait_for(predicate, timeout, what, interval)
    except HealError as exc:
        raise AssertionError(str(exc)) from None


@pytest.fixture(scope="session")
def remediation_applied(registered_blocks):
    """AlertRoutes, the remediation pool, deployments and automations on the test server."""
    from planflow.remediation import automations

    return automations.apply()


@contextlib.contextmanager
def running_remediation_worker(log: Path, env: dict[str, str] | None = None):
    """A process worker on `planflow-remediation`, polling every second, stopped after."""
    from planflow.ops.workers import worker_seen
    from planflow.remediation import automations

    name = f"test-remediation-{os.urandom(4).hex()}"
    process = automations.start_remediation_worker(log, env={**os.environ, **(env or {})}, name=name)
    try:
        wait_until(lambda: worker_seen(automations.REMEDIATION_POOL, name), 60, what="the remediation worker")
        yield process
    finally:
        automations.stop_process(process)
        stop_rescaled_workers()


@contextlib.contextmanager
def alert_driven_remediation(monitoring_stack, logs: Path):
    """The whole loop on: automations applied, a remediation worker pushing to the
    stack's Pushgateway; afterwards `quiesce()`. Yields the Pushgateway url."""
    from planflow.remediation import automations

    _, started = monitoring_stack
    gateway = started["pushgateway"].url
    automations.apply()
    try:
        with running_remediation_worker(logs / "remediation.log", env={"PLANFLOW_PUSHGATEWAY_URL": gateway}):
            yield gateway
    finally:
        quiesce()


@contextlib.contextmanager
def route_override(alertname: str, **fields):
    """The alert's AlertRoute with `fields` changed for the block, restored after."""
    from planflow.prefect.blocks.alert_route import ensure_routes, load_route, route_name

    ensure_routes()
    original = load_route(alertname)
    original.model_copy(update=fields).save(route_name(alertname), overwrite=True)
    try:
        yield load_route(alertname)
    finally:
        original.save(route_name(alertname), overwrite=True)


@pytest.fixture(scope="module")
def remediation_worker(remediation_applied, tmp_path_factory):
    with running_remediation_worker(tmp_path_factory.mktemp("remediation-worker") / "worker.log") as p:
        yield p


@pytest.fixture(scope="session")
def local_process_pool(registered_blocks):
    from planflow.prefect.workpools import apply_work_pools

    apply_work_pools(["local-process"], resource_pools=False)
    return "local-process"


def start_pool_worker(pool: str, log: Path, pool_type: str = "process"):
    from planflow.ops.workers import start_worker

    return start_worker(pool, log, pool_type=pool_type, name=f"test-{pool}-{os.getpid()}")


@pytest.fixture(scope="session")
def process_pool_worker(local_process_pool, tmp_path_factory):
    """A process worker on `local-process`, polling every second."""
    from planflow.prefect.workpools import worker_online
    from planflow.remediation.automations import stop_process

    log = tmp_path_factory.mktemp("process-worker") / "worker.log"
    process = start_pool_worker(local_process_pool, log)
    try:
        wait_until(lambda: worker_online(local_process_pool), 60, what="the local-process worker")
        yield process
    finally:
        stop_process(process)


FLAKY_ENTRY = "tests/remediation/fixtures/flaky_pipeline.py:remediation_flaky"
FLAKY_PIPELINES = "tests.remediation.fixtures.flaky_pipeline:pipeline"


def deploy_flaky(deployment: str, work_pool: str, tags: list[str]):
    from planflow.remediation.scenarios import deploy_flow

    from tests.remediation.fixtures.flaky_pipeline import remediation_flaky

    return deploy_flow(remediation_flaky, FLAKY_ENTRY, deployment, work_pool, tags)


def create_process_pool(name: str, concurrency_limit: int | None = None, backup_pool: str | None = None) -> None:
    """A process work pool; with `backup_pool`, also its ResourcePool block naming it."""
    from planflow.remediation.scenarios import create_process_pool as create

    create(name, concurrency_limit)
    if backup_pool:
        from planflow.prefect.blocks import ResourcePool

        ResourcePool(work_pool=name, cpu=2, mem_gib=2, backup_pool=backup_pool).save(name, overwrite=True)


def quiesce() -> None:
    """Remove the alert-driven automations and cancel unfinished remediation runs: the
    session's monitoring stack keeps firing alerts for the test pools that have no
    worker, which would otherwise queue remediation runs for the next test modules."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
    from prefect.states import Cancelled

    from planflow.remediation import automations

    automations.remove("failover on unhealthy pool")
    automations.remove("rescale on late-run backlog")
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[automations.REMEDIATION_POOL])), limit=200
        )
        for run in runs:
            if run.state and not run.state.is_final():
                client.set_flow_run_state(run.id, Cancelled(message="test cleanup"), force=True)
        # A failover the alert-driven modules made must not outlive them (its resume
        # re-check runs were just cancelled): resume the shared pools.
        from prefect.client.schemas.actions import WorkPoolUpdate

        for pool in client.read_work_pools():
            if pool.is_paused and pool.name in ("local-process", "docker", "kubernetes"):
                client.update_work_pool(pool.name, WorkPoolUpdate(is_paused=False))
    stop_rescaled_workers()


def delete_pools(names: list[str]) -> None:
    """Delete work pools and the ResourcePool blocks of the same name."""
    from prefect.client.orchestration import get_client

    from planflow.prefect.blocks import ResourcePool

    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.delete_work_pool(name)
            except Exception:  # noqa: BLE001
                pass
            try:
                client.delete_block_document(ResourcePool.load(name)._block_document_id)
            except Exception:  # noqa: BLE001
                pass


def stop_rescaled_workers() -> list[int]:
    """Stop the workers the rescale flow started against this test server (found by their
    name prefix and this session's PREFECT_API_URL), so none outlives the session."""
    import signal

    stopped = []
    api = os.environ.get("PREFECT_API_URL", "").encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if b"planflow-rescale-" not in cmdline or b"worker" not in cmdline:
                continue
            if b"PREFECT_API_URL=" + api not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            os.killpg(int(proc.name), signal.SIGTERM)
            stopped.append(int(proc.name))
        except (OSError, ProcessLookupError):
            continue
    return stopped
