"""Fixtures of the remediation tests: real Prefect server, real workers (process pools),
the automations applied as `planflow automations apply` does.

Each test module cleans up what it made (`Leftovers`): its pools and their ResourcePool
blocks and guard ledgers, the remediation runs its alerts or flows caused (created while
it ran), the workers a rescale started for it. It never relies on what another module
left: the folder's baseline (from its first test to its last: package-scoped) is the
remediation deployments with the retry and crash automations on; the alert-driven
automations (failover, rescale) are on only while a module drives the alert loop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled

from planflow.ops.workers import start_worker, stop_group, worker_seen
from planflow.prefect.blocks import ResourcePool
from planflow.prefect.blocks.alert_route import ensure_routes, load_route, route_name
from planflow.prefect.workpools import apply_work_pools, worker_online
from planflow.remediation import automations
from planflow.remediation.guard import Guard
from planflow.remediation.heal_watch import HealError, wait_for
from planflow.remediation.scaling import WORKER_PREFIX
from planflow.remediation.scenarios import create_process_pool as create_pool
from planflow.remediation.scenarios import deploy_flow

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
ALERT_AUTOMATIONS = [automations.NAMES[action] for action in automations.ALERT_ACTIONS]
UNFINISHED = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """heal_watch.wait_for, failing the test (AssertionError) on a timeout."""
    try:
        return wait_for(predicate, timeout, what, interval)
    except HealError as exc:
        raise AssertionError(str(exc)) from None


def task_states_settled(client, run_id, cached=("prepare", "summarise"), completed=("flaky",), timeout: float = 30.0):
    """The task-run state names of flow run `run_id` by task name, once each of `cached`
    shows a Cached run and each of `completed` a Completed one: task-run states reach the
    server as events, recorded a moment after the flow run's own Completed (CI once read
    'summarise': ['Running', 'Completed'], 'flaky': ['Running'] of a completed retry)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    seen: dict[str, list[str]] = {}

    def states():
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        seen.clear()
        for t in tasks:
            seen.setdefault(t.name, []).append(t.state.name if t.state else "-")
        settled = all("Cached" in seen.get(n, []) for n in cached) and all(
            "Completed" in seen.get(n, []) for n in completed
        )
        return dict(seen) if settled else None

    what = f"{', '.join(cached)} read back Cached and {', '.join(completed)} Completed"
    try:
        return wait_until(states, timeout, 1.0, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; task runs: {seen}") from None


# -- what a module leaves behind ----------------------------------------------------------
def cancel_remediation_runs(since: datetime) -> int:
    """Cancel the unfinished remediation runs created since `since` (a module's own:
    modules run one after the other)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[automations.REMEDIATION_POOL])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=UNFINISHED))),
            limit=200,
        )
        mine = [r for r in runs if r.created is None or r.created >= since]
        for run in mine:
            client.set_flow_run_state(
                run.id, Cancelled(message="test cleanup: the module that caused it ended"), force=True
            )
    return len(mine)


def stop_rescaled_workers(since: datetime | None = None) -> list[int]:
    """Stop the workers the rescale flow started against this test server (their name
    prefix and this session's PREFECT_API_URL) since `since`, so none outlives its module."""
    api = os.environ.get("PREFECT_API_URL", "")
    after = since.timestamp() if since else 0.0
    stopped = []
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if WORKER_PREFIX not in cmdline or "worker" not in cmdline or proc.info["create_time"] < after:
                continue
            if proc.environ().get("PREFECT_API_URL") != api:
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        stop_group(proc.pid, 10)
        stopped.append(proc.pid)
    return stopped


def delete_pools(names: list[str]) -> None:
    """Delete work pools, the ResourcePool blocks of the same name and their guard ledgers."""
    with get_client(sync_client=True) as client:
        for name in names:
            with contextlib.suppress(Exception):
                client.delete_work_pool(name)
            with contextlib.suppress(Exception):
                client.delete_block_document(ResourcePool.load(name)._block_document_id)
            # past the guard lock's lease (60 s): a re-check stopped with the remediation worker may hold it
            Guard(load_route("PlanflowWorkPoolNotReady"), lock_timeout=150, shared=True).reset(f"failover:{name}")
            Guard(load_route("PlanflowLateRunBacklog"), lock_timeout=150).reset(f"rescale:{name}")


class Leftovers:
    """What a test module makes on the session's server, undone by `clean()`."""

    def __init__(self) -> None:
        self.since = datetime.now(UTC) - timedelta(seconds=1)
        self.pools: list[str] = []

    def pool(
        self, name: str, concurrency_limit: int | None = None, backup_pool: str | None = None, served: bool = False
    ) -> str:
        """A process work pool (with `backup_pool`, also its ResourcePool naming it), deleted
        after; with `served`, one whose worker has stopped (`worker_that_stopped`)."""
        self.pools.append(name)
        create_process_pool(name, concurrency_limit, backup_pool)
        if served:
            worker_that_stopped(name)
        return name

    def clean(self) -> None:
        cancel_remediation_runs(self.since)
        stop_rescaled_workers(self.since)
        delete_pools(self.pools)


@pytest.fixture(scope="module")
def module_leftovers(remediation_applied) -> Iterator[Leftovers]:
    leftovers = Leftovers()
    yield leftovers
    leftovers.clean()


# -- the remediation deployments, automations and worker -----------------------------------
@pytest.fixture(scope="package")
def remediation_applied(registered_blocks):
    """AlertRoutes, the remediation pool, deployments and automations on the test server;
    the alert-driven automations off (the baseline; `alert_driven_remediation` turns them on).
    Removed after this folder's last test: tests that run after it on the same server (two
    xdist workers, tests/conftest.py) must not see their failed runs retried."""
    applied = apply_baseline()
    yield applied
    automations.remove()


def apply_baseline() -> list[str]:
    """`automations.apply()`, then the alert-driven automations off again."""
    applied = automations.apply()
    alerts_off()
    return applied


def alerts_off() -> None:
    for name in ALERT_AUTOMATIONS:
        automations.remove(name)


@contextlib.contextmanager
def running_remediation_worker(log: Path, env: dict[str, str] | None = None) -> Iterator:
    """A remediation worker on `planflow-remediation`, polling every second, stopped after
    (with the workers its rescales started)."""
    since = datetime.now(UTC)
    name = f"test-remediation-{os.urandom(4).hex()}"
    process = automations.start_remediation_worker(log, env={**os.environ, **(env or {})}, name=name)
    try:
        wait_until(lambda: worker_seen(automations.REMEDIATION_POOL, name), 60, what="the remediation worker")
        yield process
    finally:
        automations.stop_process(process)
        stop_rescaled_workers(since)


@contextlib.contextmanager
def alert_driven_remediation(monitoring_stack, logs: Path) -> Iterator[str]:
    """The whole loop on: every automation applied, a remediation worker pushing to the
    stack's Pushgateway. Afterwards the alert-driven automations are off again and the
    remediation runs caused meanwhile cancelled. Yields the Pushgateway url."""
    _, started = monitoring_stack
    gateway = started["pushgateway"].url
    since = datetime.now(UTC) - timedelta(seconds=1)
    automations.apply()
    try:
        with running_remediation_worker(logs / "remediation.log", env={"PLANFLOW_PUSHGATEWAY_URL": gateway}):
            yield gateway
    finally:
        alerts_off()
        cancel_remediation_runs(since)


@contextlib.contextmanager
def route_override(alertname: str, **fields) -> Iterator:
    """The alert's AlertRoute with `fields` changed for the block, restored after."""
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


# -- pools and workers ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def local_process_pool(registered_blocks):
    apply_work_pools(["local-process"], resource_pools=False)
    return "local-process"


def worker_that_stopped(pool: str) -> None:
    """The server's record of a worker that served `pool` and stopped beating (a worker
    that died): one heartbeat of a 1 s interval, then no more, waited until it no longer
    counts as live. A pool that never had a worker is left alone by the failover (just
    deployed to, its first worker not started)."""
    from planflow.remediation.pools import live_workers

    with get_client(sync_client=True) as client:
        client.send_worker_heartbeat(pool, f"stopped-{pool}", heartbeat_interval_seconds=1)
        wait_until(lambda: not live_workers(client, pool), 15, what=f"the stopped worker of {pool} to count as gone")


def start_pool_worker(pool: str, log: Path, pool_type: str = "process"):
    return start_worker(pool, log, pool_type=pool_type, name=f"test-{pool}-{os.getpid()}")


@pytest.fixture(scope="package")
def process_pool_worker(local_process_pool, tmp_path_factory):
    """A process worker on `local-process`, polling every second, stopped after this
    folder's last test (left running, it picked up other folders' runs of `local-process`
    without their environment: CI once failed three tests so)."""
    log = tmp_path_factory.mktemp("process-worker") / "worker.log"
    process = start_pool_worker(local_process_pool, log)
    try:
        wait_until(lambda: worker_online(local_process_pool), 60, what="the local-process worker")
        yield process
    finally:
        automations.stop_process(process)


# An import path, not a file path: a process worker runs each flow run in a temporary
# folder; the project folder is on the worker's PYTHONPATH (ops.workers.start_process).
FLAKY_ENTRY = "tests.remediation.fixtures.flaky_pipeline:remediation_flaky"
FLAKY_PIPELINES = "tests.remediation.fixtures.flaky_pipeline:pipeline"


def deploy_flaky(deployment: str, work_pool: str, tags: list[str]):
    from tests.remediation.fixtures.flaky_pipeline import remediation_flaky

    return deploy_flow(remediation_flaky, FLAKY_ENTRY, deployment, work_pool, tags)


def create_process_pool(name: str, concurrency_limit: int | None = None, backup_pool: str | None = None) -> None:
    """A process work pool; with `backup_pool`, also its ResourcePool block naming it."""
    create_pool(name, concurrency_limit)
    if backup_pool:
        ResourcePool(work_pool=name, cpu=2, mem_gib=2, backup_pool=backup_pool).save(name, overwrite=True)
