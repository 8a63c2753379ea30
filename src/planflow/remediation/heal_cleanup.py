"""What `planflow demo heal` leaves behind: nothing.

A scenario ends with its workers stopped. A pool left without a worker is, to the alert
loop, an unhealthy pool: PlanflowWorkPoolNotReady fires, the failover pauses it after the
demo has ended, and its resolved alert schedules re-checks of a pool nobody will serve.
So a scenario takes away what it made: its runs that have not finished are cancelled,
its deployments, work pools, ResourcePool blocks and guard ledgers go, every worker a
rescale started for it is stopped, and once the loop is quiet about its pools (bounded
wait) any remediation run about them still waiting is cancelled. `clean_slate` does the
same for what an interrupted earlier demo left, before a scenario starts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled

from planflow.prefect.blocks import ResourcePool
from planflow.prefect.blocks.alert_route import load_route
from planflow.prefect.event_watch import changed_here
from planflow.remediation.guard import Guard
from planflow.remediation.heal_watch import HealError, events_about, wait_for
from planflow.remediation.names import REMEDIATION_POOL
from planflow.remediation.scaling import stop_worker

Say = Callable[[str], None]
ACTION_GRACE_SECONDS = 10.0
UNFINISHED = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]


def _unfinished(client: SyncPrefectClient, pools: list[str], deployments: list[Any] | None = None) -> list[FlowRun]:
    """Unfinished runs on `pools`, and (given) of `deployments` wherever they run."""
    state = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=UNFINISHED)))
    runs = client.read_flow_runs(
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=pools)), flow_run_filter=state, limit=200
    )
    if deployments:
        seen = {r.id for r in runs}
        runs += [
            r
            for r in client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(deployments))),
                flow_run_filter=state,
                limit=200,
            )
            if r.id not in seen
        ]
    return runs


def about_pools(run: FlowRun, pools: Iterable[str]) -> bool:
    """A remediation run whose alert names one of `pools`."""
    alert = (run.parameters or {}).get("alert") or {}
    named = {
        alert.get("work_pool"),
        (alert.get("labels") or {}).get("work_pool"),
        str(alert.get("resource_id", "")).removeprefix("prefect.work-pool."),
    }
    return bool(named & set(pools))


def remediations_about(client: SyncPrefectClient, pools: list[str]) -> list[FlowRun]:
    """The unfinished remediation runs (due or scheduled later) about `pools`."""
    return [r for r in _unfinished(client, [REMEDIATION_POOL]) if about_pools(r, pools)]


def _due(client: SyncPrefectClient, pools: list[str]) -> list[FlowRun]:
    """The remediation runs about `pools` that are running or due (not waiting for later)."""
    return [r for r in remediations_about(client, pools) if not r.state or not r.state.is_scheduled()]


def _cancel(client: SyncPrefectClient, runs: list[FlowRun], why: str) -> int:
    for run in runs:
        client.set_flow_run_state(run.id, Cancelled(message=f"planflow demo heal: {why}"), force=True)
    return len(runs)


def forget_guards(pools: list[str]) -> None:
    """Stop the workers a rescale recorded for `pools` and reset their guard ledgers."""
    rescale_guard = Guard(load_route("PlanflowLateRunBacklog"))
    failover_guard = Guard(load_route("PlanflowWorkPoolNotReady"), shared=True)
    for pool in pools:
        for worker in rescale_guard.ledger(f"rescale:{pool}").get("workers", []):
            if worker.get("kind", "process") == "process":
                stop_worker(int(worker["pid"]), worker["name"])
        rescale_guard.reset(f"rescale:{pool}")
        failover_guard.reset(f"failover:{pool}")


def clean_slate(client: SyncPrefectClient, pools: list[str], say: Say) -> None:
    """Undo what an interrupted earlier demo left on its own pools: unfinished runs and
    remediation runs about them (cancelled), extra workers of a rescale (stopped), the
    guard's ledgers (reset)."""
    left = _cancel(client, _unfinished(client, pools), "left by an earlier demo")
    left += _cancel(client, remediations_about(client, pools), "left by an earlier demo")
    if left:
        say(f"cancelled {left} run(s) an earlier demo left on or about {', '.join(pools)}")
    forget_guards(pools)


def alerts_about(prometheus: str, pools: list[str]) -> list[str]:
    """The alerts Prometheus holds (pending or firing) about `pools`."""
    query = f'ALERTS{{work_pool=~"{"|".join(pools)}"}}'
    answer = httpx.get(f"{prometheus.rstrip('/')}/api/v1/query", params={"query": query}, timeout=10)
    answer.raise_for_status()
    return [
        f"{s['metric'].get('alertname')} {s['metric'].get('alertstate')} on {s['metric'].get('work_pool')}"
        for s in answer.json()["data"]["result"]
    ]


def unsettled_alerts(pools: list[str], began: dt.datetime, grace: float = ACTION_GRACE_SECONDS) -> list[str]:
    """Alert events about `pools` since `began` that may still lead to a remediation run:
    a firing alert whose resolution has not reached Prefect, or an event received less
    than `grace` seconds ago (an automation acts within a second or two of an event; one
    it has not acted on by then it dropped, and it will not act later)."""
    events = [e for pool in pools for e in events_about("planflow.alert.", f"prefect.work-pool.{pool}", began)]
    resolved = {e["payload"].get("fingerprint") for e in events if e["event"] == "planflow.alert.resolved"}
    now = dt.datetime.now(dt.UTC)
    unsettled = []
    for e in events:
        name = f"{e['payload'].get('labels', {}).get('alertname')} {e['event'].rsplit('.', 1)[-1]}"
        received = dt.datetime.fromisoformat(str(e.get("received") or e["occurred"]).replace("Z", "+00:00"))
        if e["event"] == "planflow.alert.firing" and e["payload"].get("fingerprint") not in resolved:
            unsettled.append(f"{name}: not resolved yet")
        elif (now - received).total_seconds() < grace:
            unsettled.append(f"{name}: just received")
    return unsettled


def _delete(client: SyncPrefectClient, pools: list[str], deployments: list[Any]) -> None:
    for deployment in deployments:
        with contextlib.suppress(ObjectNotFound):
            client.delete_deployment(deployment)
    for pool in pools:
        with contextlib.suppress(ObjectNotFound):
            client.delete_work_pool(pool)
        with contextlib.suppress(Exception):  # no ResourcePool of that name: nothing to delete
            client.delete_block_document(ResourcePool.load(pool)._block_document_id)
            changed_here()  # this process's kept block reads (event_watch.py) are read again


def tear_down(
    pools: list[str],
    deployments: list[Any],
    say: Say,
    prometheus: str,
    began: dt.datetime,
    timeout: float = 120.0,
) -> list[str]:
    """Take away what a scenario made (see the module docstring): `pools` (work pools and
    ResourcePool blocks of that name) and `deployments` (ids); `began`: when the scenario
    began (its alerts since then must all be answered, their resolution included). Never
    raises: returns what is still left (empty when nothing is), one line each."""
    left: list[str] = []
    since = dt.datetime.now(dt.UTC)
    try:
        with get_client(sync_client=True) as client:
            cancelled = _cancel(client, _unfinished(client, pools, deployments), "the scenario ended")
            forget_guards(pools)
            _delete(client, pools, deployments)
            names = ", ".join(pools)
            say(f"clean-up: {names} and the scenario's deployments deleted, {cancelled} unfinished run(s) cancelled")
            try:
                wait_for(lambda: not alerts_about(prometheus, pools), timeout, f"the alerts about {names} to end")
                # ... and their resolutions to reach Prefect (Alertmanager and the bridge
                # may still hold them: a remediation run would follow).
                open_alerts: list[str] = []

                def settled() -> bool:
                    open_alerts[:] = unsettled_alerts(pools, began)
                    return not open_alerts

                try:
                    wait_for(settled, timeout, f"the resolutions of the alerts about {names}")
                except HealError as exc:
                    raise HealError(f"{exc} Still open: {'; '.join(open_alerts)}") from None
                wait_for(lambda: not _due(client, pools), timeout, f"the remediation runs about {names} to finish")
            except HealError as exc:
                left.append(str(exc))
            late = _cancel(client, remediations_about(client, pools), "its pool was removed after the scenario")
            if late:
                say(f"cancelled {late} remediation run(s) still waiting about {names}")
            forget_guards(pools)  # anything a remediation recorded meanwhile
            quiet = (dt.datetime.now(dt.UTC) - since).total_seconds()
            say(f"clean-up of {names} done in {quiet:.0f} s")
            left += [f"run {r.name} ({r.state_name}) about {names}" for r in remediations_about(client, pools)]
            left += [f"work pool {p} still exists" for p in pools if _exists(client, p)]
    except Exception as exc:  # noqa: BLE001 - the scenario's own result matters more
        left.append(f"clean-up failed: {type(exc).__name__}: {exc}")
    if left:
        say("left behind after clean-up (since " + since.isoformat(timespec="seconds") + "):\n  " + "\n  ".join(left))
    return left


def _exists(client: SyncPrefectClient, pool: str) -> bool:
    try:
        client.read_work_pool(pool)
    except ObjectNotFound:
        return False
    return True
