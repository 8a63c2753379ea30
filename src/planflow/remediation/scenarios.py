"""`planflow demo heal`: a failover and a rescale on the embedded stack, every part real.

Both scenarios go through the whole loop: the exporter sees the pool, Prometheus fires
the alert, Alertmanager posts it to the bridge, the bridge emits `planflow.alert.*`,
an automation starts the remediation flow on the `planflow-remediation` worker, and the
flow acts. Nothing here calls a remediation flow directly; the scenarios only cause the
trouble and watch. The end-to-end tests (tests/remediation/test_remediation_heal.py)
run the same functions and assert on what they return.

- failover: pool `heal-primary` (process, its ResourcePool's backup is `local`) loses its
  worker; a run submitted there is stuck -> PlanflowWorkPoolNotReady -> the failover flow
  pauses heal-primary, cancels the stuck run and resubmits it on `local-process`, where it
  completes; the worker comes back -> the pool is resumed.
- rescale: pool `heal-busy` (concurrency limit 1, one worker) gets more runs than it
  can start -> they turn Late -> PlanflowLateRunBacklog -> the rescale flow asks the
  planner what more workers buy, raises the limit and starts workers -> the backlog
  drains -> the alert resolves -> limit restored, the extra workers stopped.

Each scenario ends by taking away what it made (heal_cleanup.tear_down): otherwise its
worker-less pool would be failed over and re-checked after the demo ended. What could
not be cleaned up is in the result's `left_behind`.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import ObjectAlreadyExists
from prefect.utilities.callables import parameter_schema

from planflow.ops.workers import is_our_process, start_worker, stop_process
from planflow.prefect.blocks import ResourcePool, local_pool_from_machine
from planflow.prefect.blocks.alert_route import load_route
from planflow.prefect.jobvars import load_template
from planflow.prefect.workpools import apply_work_pools, worker_online
from planflow.remediation import demo_pipeline
from planflow.remediation.guard import Guard
from planflow.remediation.heal_cleanup import clean_slate, tear_down
from planflow.remediation.heal_watch import (
    HealError,
    events_about,
    prometheus_url,
    wait_about,
    wait_for,
    wait_until_quiet,
)
from planflow.remediation.pools import live_workers, stuck_runs

FLOW_NAME = demo_pipeline.pipeline.name
ENTRYPOINT = "planflow.remediation.demo_pipeline:heal_demo"
PARAMETERS = {"seconds": 2.0}
PRIMARY = "heal-primary"
BUSY = "heal-busy"
BACKUP_WORK_POOL = "local-process"
# Rescale: eight runs of ten seconds (plus the process start-up) on a pool that starts
# one at a time: a backlog of over 80 s, which outlasts the ~60 s from submission to the
# remediation on a loaded 2-core machine (up to 30 s until Prefect's late-runs service
# marks a run Late, then the alert's `for`, the scrape, the bridge, the automation and
# the remediation flow's own start). With six runs of five seconds (CI, December 2026)
# the backlog had nearly drained by then and the planner rightly saw no gain.
BACKLOG_RUNS = 8
BUSY_PARAMETERS = {"seconds": 10.0}

Say = Callable[[str], None]
__all__ = ["HealError", "failover_scenario", "rescale_scenario"]


@dataclass
class Timeline:
    """Seconds since the scenario's trouble began, per step."""

    say: Say = print
    start: float = field(default_factory=time.monotonic)
    steps: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, what: str) -> float:
        at = time.monotonic() - self.start
        self.steps.append((what, round(at, 1)))
        self.say(f"[{at:6.1f} s] {what}")
        return at

    def restart(self) -> None:
        self.start = time.monotonic()
        self.steps.clear()


# -- set-up -------------------------------------------------------------------------------
def create_process_pool(name: str, concurrency_limit: int | None = None) -> None:
    """A process work pool from planflow's template, or the existing one set to this limit."""
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type="process",
                    base_job_template=load_template("process"),
                    concurrency_limit=concurrency_limit,
                )
            )
        except ObjectAlreadyExists:
            client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=concurrency_limit, is_paused=False))


def deploy_flow(
    flow: Flow, entrypoint: str, deployment: str, work_pool: str, tags: list[str], parameters: dict | None = None
) -> DeploymentResponse:
    """A deployment of an installed flow (`entrypoint` is an import path) on `work_pool`;
    created or updated."""
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(flow.name)
        deployment_id = client.create_deployment(
            flow_id=flow_id,
            name=deployment,
            entrypoint=entrypoint,
            work_pool_name=work_pool,
            tags=tags,
            parameters=parameters or {},
            enforce_parameter_schema=False,
            job_variables={},
            parameter_openapi_schema=parameter_schema(flow.fn).model_dump_for_openapi(),
        )
        return client.read_deployment(deployment_id)


def _worker(pool: str, logs: Path, tag: str, env: dict[str, str] | None) -> subprocess.Popen:
    return start_worker(
        pool,
        logs / f"{pool}-{tag}.log",
        name=f"{pool}-{tag}-{os.urandom(3).hex()}",
        env=env,
        heartbeat_seconds=2,
        query_seconds=1,
    )


def _final(client: SyncPrefectClient, run_id: Any) -> FlowRun | None:
    run = client.read_flow_run(run_id)
    return run if run.state and run.state.is_final() else None


def settle(client: SyncPrefectClient, pools: list[str], say: Say, since: datetime, prometheus: str) -> None:
    """Start from healthy pools: each READY with a live worker, the alert loop quiet about
    them (a pool seen before its worker's first heartbeat may have raised an alert of its
    own: Prometheus has seen them healthy since, and every alert about them has been
    answered), no remediation pending, none paused."""

    def ready() -> bool:
        return all(
            str(getattr(client.read_work_pool(p).status, "value", "")).upper() in ("READY", "PAUSED") for p in pools
        )

    wait_for(ready, 60, f"{', '.join(pools)} to be READY")
    wait_until_quiet(client, pools, since, prometheus)
    for pool in pools:
        if client.read_work_pool(pool).is_paused:
            client.update_work_pool(pool, WorkPoolUpdate(is_paused=False))
            say(f"{pool} was paused (an earlier alert); resumed it to start from a healthy pool")


# -- failover -----------------------------------------------------------------------------
def failover_scenario(
    logs: Path,
    say: Say = print,
    timeout: float = 240.0,
    env: dict[str, str] | None = None,
    prometheus: str | None = None,
) -> dict[str, Any]:
    """Kill heal-primary's worker, submit a run there, watch planflow fail it over to
    local-process and resume heal-primary once a worker is back. Returns the timeline
    and the ids involved. `prometheus`: the stack's url (default: the running stack's)."""
    prometheus = prometheus or prometheus_url()
    set_up = datetime.now(UTC) - timedelta(seconds=5)
    flow = demo_pipeline.heal_demo
    apply_work_pools([BACKUP_WORK_POOL], resource_pools=False)
    create_process_pool(PRIMARY)
    with get_client(sync_client=True) as client:
        clean_slate(client, [PRIMARY], say)
    machine = local_pool_from_machine(PRIMARY)
    ResourcePool(
        work_pool=PRIMARY, cpu=machine.cpu, mem_gib=machine.mem_gib, backup_pool="local", cost_per_hour=0.0
    ).save(PRIMARY, overwrite=True)
    primary_dep = deploy_flow(flow, ENTRYPOINT, f"{FLOW_NAME}-{PRIMARY}", PRIMARY, ["planflow", "process"], PARAMETERS)
    backup_dep = deploy_flow(
        flow, ENTRYPOINT, f"{FLOW_NAME}-process", BACKUP_WORK_POOL, ["planflow", "process"], PARAMETERS
    )
    started = []
    timeline = Timeline(say)
    result: dict[str, Any] = {"scenario": "failover", "work_pool": PRIMARY, "backup": BACKUP_WORK_POOL}
    try:
        if not worker_online(BACKUP_WORK_POOL):
            started.append(_worker(BACKUP_WORK_POOL, logs, "backup", env))
        worker = _worker(PRIMARY, logs, "1", env)
        started.append(worker)
        with get_client(sync_client=True) as client:
            wait_for(lambda: live_workers(client, PRIMARY), 60, f"a worker on {PRIMARY}")
            wait_for(lambda: live_workers(client, BACKUP_WORK_POOL), 60, f"a worker on {BACKUP_WORK_POOL}")
            settle(client, [PRIMARY, BACKUP_WORK_POOL], say, set_up, prometheus)
            say(f"{PRIMARY} has a worker; its ResourcePool names 'local' ({BACKUP_WORK_POOL}) as backup")

            timeline.restart()
            since = datetime.now(UTC) - timedelta(seconds=2)
            stop_process(worker, timeout=5)
            timeline.mark(f"the worker of {PRIMARY} died")
            stuck = client.create_flow_run_from_deployment(primary_dep.id, parameters=PARAMETERS)
            result["stuck_run"] = str(stuck.id)
            timeline.mark(f"run {stuck.name} submitted to {PRIMARY}: no worker will pick it up")

            alert = wait_for(
                lambda: events_about("planflow.alert.firing", f"prefect.work-pool.{PRIMARY}", since),
                timeout,
                f"the alert about {PRIMARY}",
            )
            timeline.mark(
                f"alert {alert[0]['payload'].get('labels', {}).get('alertname')} firing "
                "(Prometheus -> Alertmanager -> bridge -> Prefect event)"
            )
            wait_about(
                PRIMARY, since, lambda: client.read_work_pool(PRIMARY).is_paused, 90, f"the failover to pause {PRIMARY}"
            )
            timeline.mark(f"failover flow paused {PRIMARY}")
            wait_for(
                lambda: client.read_flow_run(stuck.id).state.type.value == "CANCELLED",
                60,
                f"the stuck run {stuck.name} to be cancelled",
            )
            timeline.mark(f"stuck run {stuck.name} cancelled")

            def moved():
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["failover"])), limit=50
                )
                return [r for r in runs if r.name == f"{stuck.name}-failover"]

            [moved_run] = wait_for(moved, 60, "the resubmitted run")
            result["resubmitted_run"] = str(moved_run.id)
            deployment = client.read_deployment(moved_run.deployment_id)
            result["resubmitted_deployment"] = f"{FLOW_NAME}/{deployment.name}"
            timeline.mark(
                f"resubmitted as {moved_run.name} on {deployment.work_pool_name}, "
                f"planned with pool '{moved_run.parameters.get('local_pool')}'"
            )
            done = wait_for(lambda: _final(client, moved_run.id), timeout, f"{moved_run.name} to finish")
            result["resubmitted_state"] = done.state.type.value
            timeline.mark(f"{moved_run.name} {done.state.name} on {BACKUP_WORK_POOL}")

            started.append(_worker(PRIMARY, logs, "2", env))
            timeline.mark(f"a worker of {PRIMARY} is back")
            wait_about(
                PRIMARY,
                since,
                lambda: not client.read_work_pool(PRIMARY).is_paused,
                timeout,
                f"{PRIMARY} to be resumed",
            )
            timeline.mark(f"{PRIMARY} resumed by the failover flow (a worker live again)")
            result["resumed"] = True
    finally:
        for process in started:
            stop_process(process, timeout=10)
        result["left_behind"] = tear_down([PRIMARY], [primary_dep.id, backup_dep.id], say, prometheus, set_up)
    result["timeline"] = timeline.steps
    return result


# -- rescale ------------------------------------------------------------------------------
def rescale_scenario(
    logs: Path,
    say: Say = print,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
    runs: int = BACKLOG_RUNS,
    prometheus: str | None = None,
) -> dict[str, Any]:
    """Queue more runs on heal-busy (limit 1, one worker) than it can start; watch
    planflow scale it out, drain the backlog and scale back. Returns the timeline.
    `prometheus`: the stack's url (default: the running stack's)."""
    prometheus = prometheus or prometheus_url()
    set_up = datetime.now(UTC) - timedelta(seconds=5)
    flow = demo_pipeline.heal_demo
    create_process_pool(BUSY, concurrency_limit=1)
    with get_client(sync_client=True) as client:
        clean_slate(client, [BUSY], say)
    dep = deploy_flow(flow, ENTRYPOINT, f"{FLOW_NAME}-{BUSY}", BUSY, ["planflow", "process"], BUSY_PARAMETERS)
    route = load_route("PlanflowLateRunBacklog")
    key = f"rescale:{BUSY}"
    timeline = Timeline(say)
    result: dict[str, Any] = {"scenario": "rescale", "work_pool": BUSY, "runs": runs}
    worker = _worker(BUSY, logs, "1", env)
    try:
        with get_client(sync_client=True) as client:
            wait_for(lambda: live_workers(client, BUSY), 60, f"a worker on {BUSY}")
            settle(client, [BUSY], say, set_up, prometheus)
            say(
                f"{BUSY}: concurrency limit 1, one worker; route {route.alertname}: "
                f"min {route.min_workers}, max {route.max_workers} workers, max concurrency {route.max_concurrency}"
            )
            timeline.restart()
            since = datetime.now(UTC) - timedelta(seconds=2)
            submitted = [
                client.create_flow_run_from_deployment(dep.id, parameters=BUSY_PARAMETERS) for _ in range(runs)
            ]
            result["runs_ids"] = [str(r.id) for r in submitted]
            timeline.mark(f"{runs} runs submitted to {BUSY}; it starts one at a time")
            wait_for(
                lambda: any(r.state_name == "Late" for r in stuck_runs(client, BUSY)), timeout, "a run to turn Late"
            )
            timeline.mark("runs waiting past their start time are Late")
            limit = wait_about(
                BUSY,
                since,
                lambda: (
                    (client.read_work_pool(BUSY).concurrency_limit or 1) > 1
                    and client.read_work_pool(BUSY).concurrency_limit
                ),
                timeout,
                f"the rescale flow to raise {BUSY}'s concurrency limit",
            )
            # The flow raises the limit first, then starts the workers and records each, and
            # says when it is done (`scaling` false): the count read before that was short.
            ledger = wait_for(
                lambda: (found := Guard(route).ledger(key)).get("workers") and not found.get("scaling") and found,
                60,
                "the rescale flow to record the workers it started",
            )
            extra = list(ledger["workers"])
            result.update(raised_limit=limit, extra_workers=[w["name"] for w in extra])
            timeline.mark(f"PlanflowLateRunBacklog -> rescale: limit 1 -> {limit}, {len(extra)} worker(s) started")
            # Three things now happen in whichever order: the runs finish, the alert
            # resolves (no run waits any more: limit restored), idle extra workers stop.
            pending = {
                "drained": f"all {runs} runs to finish",
                "restored": f"the limit of {BUSY} back to 1",
                "stopped": "the extra workers to stop",
            }

            def progress() -> bool:
                if "drained" in pending and all(_final(client, r.id) for r in submitted):
                    states = [client.read_flow_run(r.id).state.type.value for r in submitted]
                    result["run_states"] = states
                    timeline.mark(f"backlog drained: {states.count('COMPLETED')}/{runs} runs completed")
                    del pending["drained"]
                if "restored" in pending and client.read_work_pool(BUSY).concurrency_limit == 1:
                    timeline.mark("alert resolved (no run waits) -> rescale restored the limit to 1")
                    del pending["restored"]
                if "stopped" in pending:
                    # every worker a rescale recorded (a flapping alert may scale out twice)
                    ledger_now = Guard(route).ledger(key)
                    for w in ledger_now.get("workers", []):
                        if w["name"] not in {x["name"] for x in extra}:
                            extra.append(w)
                    if not ledger_now and not any(
                        is_our_process(int(w["pid"]), w["name"]) for w in extra if w.get("kind", "process") == "process"
                    ):
                        timeline.mark(f"{len(extra)} extra worker(s) stopped, each once idle")
                        result["extra_workers"] = [w["name"] for w in extra]
                        del pending["stopped"]
                return not pending

            wait_about(BUSY, since, progress, timeout, " and ".join(pending.values()))
            result["scaled_back"] = True
    finally:
        stop_process(worker, timeout=10)
        result["left_behind"] = tear_down([BUSY], [dep.id], say, prometheus, set_up)
    result["timeline"] = timeline.steps
    return result
