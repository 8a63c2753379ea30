"""Remediation latency, on real services (fast profile): how long from the trouble to
the remediation flow run.

Two series, each `--trials` times, each trial on a work pool of its own:

1. **alert**: an Alertmanager webhook (PlanflowWorkerHeartbeatStale for the pool) is
   posted to the real bridge (t0) -> `planflow.alert.firing` -> the failover automation
   -> flow run of `planflow-failover/remediation` created -> Running on the remediation
   worker -> the pool paused (the action done).
2. **threshold**: a process work pool with a deployment is created with no worker (t0: from then on its
   `planflow_prefect_work_pool_status{status="not_ready"}` is 1, i.e. the threshold is
   crossed) -> exporter -> Prometheus (`for: 2s`) -> Alertmanager (`group_wait: 1s`) ->
   bridge -> event -> automation -> failover flow run created -> Running -> pool paused.

Figures per series: p50 / p95 / max of t(created) - t0, t(running) - t0, t(paused) - t0.
Target: threshold crossing -> remediation flow run started <= 10 s p95.

Both series run twice, side by side: with planflow's remediation worker (the remediation
flows run in its warm process, monitoring/remediation_worker.py) and with Prefect's
plain process worker (a new interpreter per flow run), so the ratio shows what the warm
worker buys. Each trial pool has a ResourcePool block naming a backup pool (a pool with
no worker, no run and no backup is left alone by the failover: nothing to protect).

Run: ``python -m bench.bench_remediation [--trials 10]``. Starts its own Prefect server,
monitoring stack and remediation worker (polling every 1 s) in a temporary state folder,
stops them after. Writes bench/results/remediation.md and remediation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

from planflow.ops.server import free_port  # noqa: E402

from bench import percentile  # noqa: E402
from bench.tempserver import TempServer  # noqa: E402  (imports no Prefect)

# Point Prefect at a server of our own before anything imports it.
SERVER = TempServer("remediation")
HOME = SERVER.home

from planflow.ops import services  # noqa: E402
from planflow.remediation import automations  # noqa: E402


def _ts(value) -> float | None:
    return value.timestamp() if value else None


def failover_run_for(client, pool: str):
    """The first failover flow run started for `pool` (its parameters name it)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter
    from prefect.client.schemas.sorting import FlowRunSort

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["remediation"])),
        flow_run_filter=FlowRunFilter(),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=100,
    )
    mine = [
        r
        for r in runs
        if (r.parameters.get("alert") or {}).get("resource_id") == f"prefect.work-pool.{pool}"
        and "recheck" not in r.tags
    ]
    return min(mine, key=lambda r: r.created) if mine else None


WORKERS = ("warm", "process")


def trial(kind: str, bridge: str, token: str, timeout: float = 60.0) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from planflow.prefect.blocks import ResourcePool
    from planflow.prefect.jobvars import load_template

    from tests.remediation.alerts import alert, post

    pool = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
    ResourcePool(work_pool=pool, cpu=1, mem_gib=1, backup_pool="local").save(pool)
    with get_client(sync_client=True) as client:
        if kind == "alert":
            client.create_work_pool(
                WorkPoolCreate(name=pool, type="process", base_job_template=load_template("process"))
            )
            t0 = time.time()
            post(bridge, token, [alert("PlanflowWorkerHeartbeatStale", {"work_pool": pool})])
        else:
            # a deployment on the pool: PlanflowWorkPoolNotReady leaves alone a pool nobody
            # deploys to (no deployment, no worker), and so did the failover of every trial
            flow_id = client.create_flow_from_name("bench-threshold")
            t0 = time.time()
            client.create_work_pool(
                WorkPoolCreate(name=pool, type="process", base_job_template=load_template("process"))
            )
            client.create_deployment(flow_id=flow_id, name=pool, work_pool_name=pool, entrypoint="bench.py:bench")
        created = running = paused = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (created is None or running is None or paused is None):
            run = failover_run_for(client, pool)
            if run is not None:
                created = created or _ts(run.created)
                running = running or _ts(run.start_time)
            if paused is None and client.read_work_pool(pool).is_paused:
                paused = time.time()
            time.sleep(0.2)
        client.delete_work_pool(pool)
        client.delete_block_document(ResourcePool.load(pool)._block_document_id)
    rel = lambda t: None if t is None else round(t - t0, 3)  # noqa: E731
    return {"kind": kind, "pool": pool, "created_s": rel(created), "running_s": rel(running), "paused_s": rel(paused)}


def summary(rows: list[dict], field: str) -> dict:
    values = [r[field] for r in rows if r[field] is not None]
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "missing": len(rows) - len(values),
        "p50": round(statistics.median(values), 3),
        "p95": round(percentile(values, 0.95), 3),
        "max": round(max(values), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    paths = SERVER.paths
    SERVER.start()
    worker = None
    try:
        ports = {name: free_port() for name in services.ORDER}
        started = services.up(paths, profile="fast", ports=ports)
        from planflow.prefect.blocks import ensure_defaults

        ensure_defaults()
        automations.apply()
        from planflow.prefect.blocks.alert_route import load_route, route_name

        for alert_name in ("PlanflowWorkerHeartbeatStale", "PlanflowWorkPoolNotReady"):
            # one pool per trial, many trials a minute: lift the route's rate limit
            load_route(alert_name).model_copy(update={"rate_limit": 1000}).save(route_name(alert_name), overwrite=True)
        from planflow.ops.workers import start_worker, stop_process, worker_seen
        from planflow.remediation.heal_watch import wait_for

        from tests.remediation.alerts import bridge_token

        token = bridge_token(paths)
        env = {**os.environ, "PLANFLOW_PUSHGATEWAY_URL": started["pushgateway"].url}
        rows = []
        for worker_kind in WORKERS:
            log = HOME / f"remediation-worker-{worker_kind}.log"
            name = f"bench-{worker_kind}-{uuid.uuid4().hex[:6]}"
            if worker_kind == "warm":
                worker = automations.start_remediation_worker(log, env=env, name=name)
            else:
                worker = start_worker(automations.REMEDIATION_POOL, log, env=env, query_seconds=1, limit=4, name=name)
            wait_for(lambda name=name: worker_seen(automations.REMEDIATION_POOL, name), 60, f"worker {name}")
            for kind in ("alert", "threshold"):
                for _ in range(args.trials):
                    row = {"worker": worker_kind, **trial(kind, started["bridge"].url, token)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    time.sleep(1.0)
            stop_process(worker)
            worker = None
            time.sleep(3)  # the stopped worker's heartbeat must not count for the next one
    finally:
        if worker is not None:
            automations.stop_process(worker)
        services.down(paths)
        SERVER.stop()
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({os.cpu_count()} cores), Python {platform.python_version()}",
        "trials": args.trials,
        "profile": "fast",
        "worker_query_seconds": 1,
        "rows": rows,
        "summary": {
            f"{worker}/{kind}": {
                field: summary([r for r in rows if r["kind"] == kind and r["worker"] == worker], field)
                for field in ("created_s", "running_s", "paused_s")
            }
            for worker in WORKERS
            for kind in ("alert", "threshold")
        },
    }
    target = result["summary"]["warm/threshold"]["running_s"].get("p95")
    result["target_met"] = target is not None and target <= 10.0
    cold = result["summary"]["process/threshold"]["running_s"].get("p50")
    warm = result["summary"]["warm/threshold"]["running_s"].get("p50")
    result["warm_over_process_p50"] = round(warm / cold, 3) if warm and cold else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "remediation.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Remediation latency",
        "",
        f"{result['when']}, {result['machine']}, fast profile, {args.trials} trials per series, "
        "remediation worker polling every 1 s. Seconds from t0 (alert posted to the bridge, or "
        "the work pool created without a worker = threshold crossed). Worker: `warm` = planflow's "
        "remediation worker (flows run in its process), `process` = Prefect's process worker.",
        "",
        "| worker | series | step | p50 | p95 | max | n |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {
        "created_s": "failover flow run created",
        "running_s": "flow run Running",
        "paused_s": "pool paused (action done)",
    }
    for worker in WORKERS:
        for kind in ("alert", "threshold"):
            for field, label in names.items():
                s = result["summary"][f"{worker}/{kind}"][field]
                lines.append(
                    f"| {worker} | {kind} | {label} | {s.get('p50', '-')} | {s.get('p95', '-')} | "
                    f"{s.get('max', '-')} | {s.get('n', 0)} |"
                )
    lines += [
        "",
        f"Target (threshold crossing -> remediation flow run Running, p95 <= 10 s, warm worker): "
        f"{'met' if result['target_met'] else 'NOT met'} ({target} s). Warm/process ratio of the "
        f"threshold -> Running p50: {result['warm_over_process_p50']}.",
        "",
    ]
    (RESULTS / "remediation.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
