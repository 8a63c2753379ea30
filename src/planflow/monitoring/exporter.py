"""Prefect server state -> Prometheus: a long-running exporter.

Every `--interval` seconds it reads the Prefect API with Prefect's own client and
updates the gauges of `monitoring.metrics.ExporterMetrics`: flow runs by state per
flow/deployment/work pool, runs reaching a terminal state (a counter and the time of
the latest failure; the remediation machinery's own runs in a counter apart, so that
they never count in a pool's failure rate), late runs and queue depth per work queue,
work pool status, workers and their heartbeat age, deployments per pool. Labels are
names of flows, deployments, pools and
queues (bounded by what users create), never run ids.

The exporter outlives the Prefect server: a poll that fails sets
`planflow_exporter_prefect_up` to 0 and keeps the last values; the next poll that
succeeds sets it back to 1. Run it:

    python -m planflow.monitoring.exporter --port 9096
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowFilter,
    FlowFilterId,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import get_current_settings
from prometheus_client import CollectorRegistry

from planflow.monitoring import pool_calendar, prefect_api
from planflow.monitoring.metrics import ExporterMetrics
from planflow.monitoring.metrics_http import serve_metrics
from planflow.prefect.reserved import COMPONENT_FLOW, OOM_KILLED_TAG, is_remediation_run
from planflow.settings import StatePaths, apply_client_env

log = logging.getLogger("planflow.exporter")

ACTIVE_STATES = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")
TERMINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
FAILURE_STATES = ("FAILED", "CRASHED")
# A component's child run that crashed is counted this long after its end at the earliest,
# so that its parent can tag it killed for memory first (within the overlap: read again).
OOM_TAG_GRACE_SECONDS = 20.0
POOL_STATUSES = ("ready", "not_ready", "paused")
PAGE = 200


def results_bytes() -> int:
    """The results folder's size (local; read even while the server is down)."""
    try:
        folder = StatePaths.discover().results
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
    except OSError:  # a file deleted meanwhile (gc): the next poll counts again
        return 0


def _ts(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class Exporter:
    """Polls one Prefect API into one registry. `poll_once()` is the unit tests call."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        api_url: str | None = None,
        poll_timeout: float = 10.0,
        lookback_seconds: float = 0.0,
        max_runs: int = 5000,
        overlap_seconds: float = 30.0,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ExporterMetrics(self.registry)
        self.api_url = prefect_api.api_url(api_url)
        self.poll_timeout = poll_timeout
        self.max_runs = max_runs
        # a component's crash held back for its tag is read again while it is within the overlap
        self.overlap = max(overlap_seconds, OOM_TAG_GRACE_SECONDS)
        self._finished_after = time.time() - lookback_seconds
        self._seen: dict[tuple[UUID, UUID | None], float] = {}  # (flow run, its final state): when it ended
        self._flow_names: dict[UUID, str] = {}
        self._deployment_names: dict[UUID, str] = {}
        self._last_failure: dict[tuple[str, ...], float] = {}
        self.metrics.prefect_up.set(0)

    # -- lifecycle -------------------------------------------------------------------
    def _new_client(self) -> Any:
        # A PrefectClient cannot be reopened once closed: one per poll.
        api = get_current_settings().api
        return PrefectClient(
            self.api_url,
            auth_string=prefect_api._secret(api.auth_string),
            api_key=prefect_api._secret(api.key),
            httpx_settings={"timeout": self.poll_timeout},
        )

    async def _healthy(self) -> bool:
        # A quick plain check first: Prefect's client retries connection errors with
        # backoff, which would stall the exporter while the server is down.
        try:
            async with httpx.AsyncClient(
                timeout=2.0, headers=prefect_api.auth_headers(), verify=prefect_api.tls_verify()
            ) as http:
                return (await http.get(f"{self.api_url}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def poll_once(self) -> bool:
        """Read the Prefect API once; True when it answered and the metrics are fresh."""
        started = time.monotonic()
        ok = False
        try:
            if await self._healthy():
                async with self._new_client() as client:
                    await asyncio.wait_for(self._collect(client), self.poll_timeout)
                ok = True
        except Exception as exc:  # the exporter must survive any server trouble
            log.warning("poll of %s failed: %r", self.api_url, exc)
        if ok:
            self.metrics.prefect_up.set(1)
            self.metrics.last_success.set(time.time())
        else:
            self.metrics.prefect_up.set(0)
            self.metrics.poll_errors.inc()
        self.metrics.results_bytes.set(results_bytes())
        self.metrics.poll_duration.set(time.monotonic() - started)
        return ok

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll_once()
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

    # -- reading ---------------------------------------------------------------------
    async def _runs(self, client: Any, flow_run_filter: Any, sort: Any = None) -> list[Any]:
        return await self._all(client.read_flow_runs, flow_run_filter=flow_run_filter, sort=sort)

    async def _all(self, read: Any, *args: Any, **kwargs: Any) -> list[Any]:
        """Every item `read` pages through (PAGE at a time, up to max_runs): runs,
        deployments, and work pools, queues and workers too (these were read as their first
        page only, so past 200 some pools had no queue-depth or late-run figures, and their
        alerts never fired)."""
        items: list[Any] = []
        while len(items) < self.max_runs:
            page = await read(*args, limit=PAGE, offset=len(items), **kwargs)
            items.extend(page)
            if len(page) < PAGE:
                break
        return items

    async def _deployments_per_pool(self, client: Any) -> dict[str, int]:
        counts: dict[str, int] = {}
        for deployment in await self._all(client.read_deployments):
            pool = deployment.work_pool_name or ""
            counts[pool] = counts.get(pool, 0) + 1
        return counts

    async def _names(self, client: Any, runs: list[Any]) -> None:
        flow_ids = list({r.flow_id for r in runs} - set(self._flow_names))
        for i in range(0, len(flow_ids), PAGE):
            for flow in await client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=flow_ids[i : i + PAGE]))):
                self._flow_names[flow.id] = flow.name
        dep_ids = list({r.deployment_id for r in runs if r.deployment_id} - set(self._deployment_names))
        for i in range(0, len(dep_ids), PAGE):
            for dep in await client.read_deployments(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=dep_ids[i : i + PAGE]))
            ):
                self._deployment_names[dep.id] = dep.name

    def _oom_killed(self, run: Any, state: str, end: float, now: float) -> bool | None:
        """Whether `run` is a component's child killed for memory, which its parent runs
        again with more (tagged OOM_KILLED_TAG): its own state, `oom_killed`, never a crash
        of its pool. None: a component's crash too recent to tell yet."""
        if OOM_KILLED_TAG in (run.tags or ()):
            return True
        component_crash = state in FAILURE_STATES and self._flow_names.get(run.flow_id) == COMPONENT_FLOW
        return None if component_crash and now - end < OOM_TAG_GRACE_SECONDS else False

    def _run_labels(self, run: Any) -> tuple[str, str, str, str]:
        return (
            self._flow_names.get(run.flow_id, "unknown"),
            self._deployment_names.get(run.deployment_id, "") if run.deployment_id else "",
            str(run.deployment_id or ""),
            run.work_pool_name or "",
        )

    async def _collect(self, client: Any) -> None:
        now = time.time()
        pools = await self._all(client.read_work_pools)
        pool_workers = {p.name: await self._all(client.read_workers_for_work_pool, p.name) for p in pools}
        queues = await self._all(client.read_work_queues)
        deployments = await self._deployments_per_pool(client)
        # the runs due first first: past max_runs (a deployment schedules runs ahead), the
        # ones left out are those due last, never a late one
        active = await self._runs(
            client,
            FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(ACTIVE_STATES)))),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        )
        finished_after = self._finished_after - self.overlap
        finished = await self._runs(
            client,
            FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(TERMINAL_STATES))),
                end_time=FlowRunFilterEndTime(after_=datetime.fromtimestamp(finished_after, UTC)),
            ),
            sort=FlowRunSort.END_TIME_DESC,
        )
        await self._names(client, active + finished)
        self._publish(now, pools, pool_workers, queues, active, finished)
        self.metrics.pool_deployments.clear()
        for pool in pools:
            self.metrics.pool_deployments.labels(pool.name).set(deployments.get(pool.name, 0))
        await pool_calendar.collect(client, self.metrics, now)  # shared pools: reserved vs held vs capacity

    def _publish(
        self,
        now: float,
        pools: list[Any],
        pool_workers: dict[str, list[Any]],
        queues: list[Any],
        active: list[Any],
        finished: list[Any],
    ) -> None:
        m = self.metrics
        # Counters first: a terminal state is counted once, however many polls see it. A
        # run retried in place (Prefect's retries, the retry automation) ends once per try,
        # each time in a new state: each end counts (counted once per run, a retry that
        # failed again within a minute raised no alert, nor did its failure for good).
        for run in sorted(finished, key=lambda r: _ts(r.end_time) or 0):
            key = (run.id, run.state_id)
            if key in self._seen:
                continue
            end = _ts(run.end_time) or now
            state = run.state_type.value if run.state_type else "UNKNOWN"
            oom_killed = self._oom_killed(run, state, end, now)
            if oom_killed is None:
                continue  # its parent may still tag it: the next poll reads it again
            self._seen[key] = end
            if is_remediation_run(run.work_pool_name, run.tags):
                # Apart from the pools' counter: never a pool's failure rate (issue 13).
                m.remediation_runs_finished.labels(self._run_labels(run)[0], state.lower()).inc()
                continue
            labels = (*self._run_labels(run), "oom_killed" if oom_killed else state.lower())
            m.flow_runs_finished.labels(*labels).inc()
            if state in FAILURE_STATES and not oom_killed:
                self._last_failure[labels] = max(end, self._last_failure.get(labels, 0.0))
                m.last_failure.labels(*labels).set(self._last_failure[labels])
        self._finished_after = now
        horizon = now - 2 * self.overlap
        self._seen = {k: v for k, v in self._seen.items() if v >= horizon}

        by_state: dict[tuple[str, ...], int] = {}
        depth: dict[tuple[str, str], int] = {}
        late: dict[tuple[str, str], int] = {}
        for q in queues:
            depth[(q.work_pool_name or "", q.name)] = 0
            late[(q.work_pool_name or "", q.name)] = 0
        for run in active:
            state = run.state_type.value.lower() if run.state_type else "unknown"
            key = (*self._run_labels(run), state)
            by_state[key] = by_state.get(key, 0) + 1
            qkey = (run.work_pool_name or "", run.work_queue_name or "")
            is_late = (run.state_name or "") == "Late"
            due = state == "scheduled" and (_ts(run.expected_start_time) or now) <= now
            if is_late or due or state == "pending":
                depth[qkey] = depth.get(qkey, 0) + 1
            if is_late:
                late[qkey] = late.get(qkey, 0) + 1

        m.flow_runs.clear()
        for key, count in by_state.items():
            m.flow_runs.labels(*key).set(count)
        m.queue_depth.clear()
        m.late_runs.clear()
        for key, count in depth.items():
            m.queue_depth.labels(*key).set(count)
        for key, count in late.items():
            m.late_runs.labels(*key).set(count)
        m.queue_ready.clear()
        for q in queues:
            status = getattr(q.status, "value", q.status) or ""
            m.queue_ready.labels(q.work_pool_name or "", q.name).set(1 if str(status).upper() == "READY" else 0)

        m.pool_status.clear()
        m.workers.clear()
        m.heartbeat_age.clear()
        for pool in pools:
            current = str(getattr(pool.status, "value", pool.status) or "unknown").lower()
            for status in {*POOL_STATUSES, current}:
                m.pool_status.labels(pool.name, pool.type, status).set(1 if status == current else 0)
            workers = pool_workers.get(pool.name, [])
            counts = {"online": 0, "offline": 0}
            beats = []
            for worker in workers:
                status = str(getattr(worker.status, "value", worker.status) or "").lower()
                counts[status] = counts.get(status, 0) + 1
                if worker.last_heartbeat_time is not None:
                    beats.append(_ts(worker.last_heartbeat_time))
            for status, count in counts.items():
                m.workers.labels(pool.name, status).set(count)
            if beats:
                m.heartbeat_age.labels(pool.name).set(max(0.0, now - max(beats)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9096)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    parser.add_argument("--prefect-api-url", default=None, help="default: PREFECT_API_URL (the embedded server)")
    parser.add_argument(
        "--lookback", type=float, default=0.0, help="count runs that ended this many seconds before the start"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request to Prefect: 100 MB a day in its log
    # Prefect read its settings when this module imported it: the embedded server's url
    # (which apply_client_env finds) is passed on explicitly.
    api_url = args.prefect_api_url or apply_client_env()["PREFECT_API_URL"]
    exporter = Exporter(api_url=api_url, lookback_seconds=args.lookback)
    serve_metrics(exporter.registry, args.host, args.port)  # bounded in time and connections
    log.info("serving http://%s:%d/metrics for %s", args.host, args.port, exporter.api_url)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await exporter.run(args.interval, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
