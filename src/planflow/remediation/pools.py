"""What a remediation reads about a work pool from the Prefect server: its live workers,
the flow runs that wait for one, and its backup pool (ResourcePool blocks)."""

from __future__ import annotations

import datetime as dt

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType

from planflow.prefect.blocks.registry import load_pools
from planflow.prefect.blocks.resource_pool import ResourcePool


def live_workers(client: SyncPrefectClient, work_pool: str, since: dt.datetime | None = None) -> list[str]:
    """Names of the pool's workers that sent a heartbeat within three of their intervals
    (and, with `since`, after it: a worker that beat since an alert said it was gone)."""
    now = dt.datetime.now(dt.UTC)
    alive = []
    for worker in client.read_workers_for_work_pool(work_pool):
        beat = worker.last_heartbeat_time
        interval = worker.heartbeat_interval_seconds or 30
        if (
            beat
            and (now - beat).total_seconds() <= 3 * interval
            and (since is None or beat > since)
            and str(getattr(worker.status, "value", worker.status)).upper() != "OFFLINE"
        ):
            alive.append(worker.name)
    return alive


def has_had_workers(client: SyncPrefectClient, work_pool: str) -> bool:
    """Does the server know any worker of the pool, online or offline? (None: a pool just
    deployed to, its first worker not started yet.)"""
    return bool(client.read_workers_for_work_pool(work_pool))


def stuck_runs(client: SyncPrefectClient, work_pool: str, due_only: bool = False) -> list[FlowRun]:
    """Flow runs on `work_pool` that wait for a worker: Scheduled (incl. Late) or Pending;
    with `due_only`, those whose time has come (not a schedule's future runs)."""
    return client.read_flow_runs(
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[work_pool])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])),
            expected_start_time=(FlowRunFilterExpectedStartTime(before_=dt.datetime.now(dt.UTC)) if due_only else None),
        ),
        limit=200,
    )


def pool_status(client: SyncPrefectClient, work_pool: str) -> str:
    """READY, NOT_READY or PAUSED (Prefect's work pool status), upper case."""
    return str(getattr(client.read_work_pool(work_pool).status, "value", "")).upper()


def backup_of(work_pool: str) -> tuple[str | None, str | None, ResourcePool | None]:
    """(the pool's ResourcePool name, its backup pool's name, the backup ResourcePool);
    Nones where there is none."""
    pools = load_pools()
    source_name = next((name for name, p in pools.items() if p.work_pool == work_pool), None)
    backup_name = pools[source_name].backup_pool if source_name else None
    return source_name, backup_name, pools.get(backup_name) if backup_name else None
