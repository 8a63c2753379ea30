"""A real run, planned versus Prefect's default, side by side in one process.

A synthetic AI pipeline of 30 components doing real CPU work (single-threaded
numpy matrix products, a fixed amount each, calibrated once) runs in-process on
a pool smaller than its peak demand (2 cores, 3 GiB), twice per round (the
pipeline's story - a long training chain beside many short jobs - is in
`synthetic_pipeline`):

- plan: the planner's order and pools (`policy="plan"`);
- fifo: what Prefect does without a plan: every ready component is submitted, and
  capacity is granted first come, first served (`policy="fifo"`).

A warm-up run first (FIFO) gives every component an actual duration, so the plans
use learned estimates, as they do after a pipeline's first run. Rounds alternate
the two policies so that machine noise hits both. Figures: the planned
makespan, each policy's actual makespan, and the ratios the issue targets
(planned / default <= 0.8, actual / planned <= 1.15).

Then the dispatcher's own overhead per step: a chain of `--chain` no-op components
(each waits for the one before, so every release and every step event lies on the
critical path), the run's metrics pushed to a real Pushgateway when one is installed,
as in production. The figure is the chain's makespan over its length.

Run: `python -m bench.bench_dispatch [--rounds 2] [--chain 40]`. It starts a Prefect
server of its own (SQLite, a temporary state folder) and stops it at the end, so the
user's run history and pools are left alone. Writes bench/results/dispatch.md
and .json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
POOL = "bench-small"
CAPACITY = {"cpu": 2.0, "mem_gib": 3.0}


def _units_per_second() -> float:
    """Matrix products per second per thread with both cores busy (calibration for the
    declared estimates; the plan then uses durations learned from the warm-up run)."""
    started = time.perf_counter()
    work(units=200, threads=2)
    return 200 / (time.perf_counter() - started)


def work(units: int = 0, threads: int = 1) -> float:
    """Real CPU work: `units` single-threaded 320x320 matrix products per thread."""
    import threading

    import numpy as np
    from threadpoolctl import threadpool_limits

    results: list[float] = []

    def one(seed: int) -> None:
        a = np.random.default_rng(seed).random((320, 320))
        for _ in range(units):
            a = (a @ a) / 320.0
        results.append(float(a.sum()))

    with threadpool_limits(1):
        workers = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    return sum(results)


def synthetic_pipeline(rate: float, seed: int = 42):
    """30 components of a nightly churn-model refresh, a shape where ordering matters.

    The story: after `ingest_events`, one long chain rebuilds the model -
    `build_training_set -> train_model -> calibrate -> evaluate_holdout ->
    batch_inference -> publish_report`.  Its steps are single-threaded (1 core; the
    scoring step 2) but memory-hungry (training holds 2 GiB), and training is by far the
    longest step, so the chain is the critical path.  Beside it, the same ingest feeds
    many short, independent jobs that the team added over time and declared right after
    ingest: 9 data-quality checks (0.5 GiB), 7 feature-drift reports (1-1.5 GiB), 4
    segment evaluations of the model now in production (0.75 GiB), and 2 embedding
    backfills (2 cores).  `publish_report` waits for all of them.

    Without a plan (FIFO, declaration order among ready components) the cheap wide jobs
    take both cores first and the chain starts late.  With a plan the chain starts at
    once and the short jobs fill the second core around it; memory decides which of
    them fit beside training (only jobs of <= 1 GiB) and which must wait for the chain's
    lighter steps, so packing matters too.  Pool: 2 cores, 3 GiB.
    """
    from planflow.core.component import component
    from planflow.core.pipeline import Pipeline, Step

    rng = random.Random(seed)
    steps: list[Step] = []

    def add(name: str, seconds: float, cpu: int, mem: float, after: tuple[str, ...]) -> None:
        comp = component(work, name=name, cpu=cpu, mem_gib=mem, est_seconds=seconds, pools=[POOL])
        steps.append(Step(name, comp, after=after, params={"units": max(1, int(seconds * rate)), "threads": cpu}))

    add("ingest_events", 1.0, 1, 1.0, ())
    side: list[str] = []
    checks = []
    for i in range(9):
        checks.append(f"quality_check_{i}")
        add(checks[-1], round(rng.uniform(0.4, 0.8), 2), 1, 0.5, ("ingest_events",))
    add("quality_summary", 0.3, 1, 0.25, tuple(checks))
    side.append("quality_summary")
    for i in range(7):
        side.append(f"drift_report_{i}")
        add(side[-1], round(rng.uniform(0.8, 1.4), 2), 1, rng.choice((1.0, 1.25, 1.5)), ("ingest_events",))
    for i in range(4):
        side.append(f"segment_eval_{i}")
        add(side[-1], round(rng.uniform(0.6, 1.0), 2), 1, 0.75, ("ingest_events",))
    for i in range(2):
        side.append(f"embedding_backfill_{i}")
        add(side[-1], 1.5, 2, 1.0, ("ingest_events",))
    add("build_training_set", 2.0, 1, 1.5, ("ingest_events",))
    add("train_model", 8.0, 1, 2.0, ("build_training_set",))
    add("calibrate", 1.5, 1, 1.0, ("train_model",))
    add("evaluate_holdout", 1.5, 1, 1.0, ("calibrate",))
    add("batch_inference", 2.0, 2, 2.0, ("evaluate_holdout",))
    add("publish_report", 0.3, 1, 0.25, ("batch_inference", *side))
    return Pipeline("bench-synthetic-30", steps, description="synthetic AI pipeline for the dispatch benchmark")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chain", type=int, default=40, help="no-op components in the overhead chain (0: skip)")
    args = parser.parse_args(argv)

    from bench.tempserver import TempServer

    with TempServer("dispatch"):  # before Prefect is imported
        from planflow.prefect.blocks import ResourcePool, ensure_defaults

        ensure_defaults()
        ResourcePool(work_pool="local-process", cpu=CAPACITY["cpu"], mem_gib=CAPACITY["mem_gib"]).save(
            POOL, overwrite=True
        )
        rate, pipeline, rounds = _rounds(args.rounds)
        figures = _figures(rate, pipeline, rounds)
        if args.chain:
            figures["chain"] = chain_overhead(args.chain)
    write(figures)
    return json.loads((RESULTS / "dispatch.json").read_text())


def _rounds(count: int):
    from planflow import to_flow  # after TempServer pointed Prefect at its server

    rate = _units_per_second()
    pipeline = synthetic_pipeline(rate)
    assert len(pipeline.steps) == 30, len(pipeline.steps)
    flow = to_flow(pipeline)
    flow(policy="fifo", local_pool=POOL)  # warm-up: durations for the estimates
    rounds = []
    for r in range(count):
        order = ("plan", "fifo") if r % 2 == 0 else ("fifo", "plan")
        result = {}
        for policy in order:
            result[policy] = flow(policy=policy, local_pool=POOL)
        plan = result["plan"]["plan"]
        rounds.append(
            {
                "planned_makespan_s": plan["makespan_s"],
                "lower_bound_s": plan["lower_bound_s"],
                "plan_status": plan["status"],
                "solve_seconds": plan["solve_seconds"],
                "plan_actual_s": result["plan"]["makespan_s"],
                "fifo_actual_s": result["fifo"]["makespan_s"],
            }
        )
        print(rounds[-1], flush=True)
    return rate, pipeline, rounds


def noop() -> int:
    return 1


def chain_overhead(steps: int, rounds: int = 5) -> dict:
    """Seconds per step of a chain of no-op components (median of `rounds` runs after a
    warm-up), with the run's metrics pushed to a Pushgateway of its own when installed."""
    import os
    import shutil
    import subprocess

    import httpx
    from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

    from planflow import to_flow
    from planflow.core.component import component
    from planflow.core.pipeline import Pipeline, Step
    from planflow.ops.server import free_port

    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    gateway = None
    if binary:
        port = free_port()
        gateway = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}"
        ready = Retrying(
            retry=retry_if_exception_type(httpx.HTTPError),
            wait=wait_fixed(0.2),
            stop=stop_after_delay(30),
            reraise=True,
        )
        for attempt in ready:
            with attempt:
                httpx.get(f"{url}/-/ready", timeout=2).raise_for_status()
        os.environ["PLANFLOW_PUSHGATEWAY_URL"] = url
    try:
        step = component(noop, cpu=0.1, mem_gib=0.01, est_seconds=0.05)
        chain = [Step(f"s{i:03d}", step, after=(f"s{i - 1:03d}",) if i else ()) for i in range(steps)]
        flow = to_flow(Pipeline("bench-chain", chain, description="no-op chain: the dispatcher's overhead"))
        flow()  # warm-up
        makespans = [flow()["makespan_s"] for _ in range(rounds)]
    finally:
        os.environ.pop("PLANFLOW_PUSHGATEWAY_URL", None)
        if gateway:
            gateway.terminate()
            gateway.wait(10)
    median = statistics.median(makespans)
    print({"chain_makespans_s": makespans}, flush=True)
    return {
        "steps": steps,
        "pushgateway": bool(binary),
        "makespans_s": makespans,
        "median_makespan_s": median,
        "median_ms_per_step": 1000 * median / steps,
    }


def _figures(rate: float, pipeline, rounds: list[dict]) -> dict:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    totals = pipeline.totals()
    figures = {
        "components": len(pipeline.steps),
        "pool": {"name": POOL, **CAPACITY},
        "peak_demand_cpu_if_all_ready": sum(
            s.spec.cpu for s in pipeline.steps.values() if pipeline.upstream(s.name) == ("ingest_events",)
        ),
        "cpu_seconds": totals["cpu_seconds"],
        "resource_bound_s": totals["cpu_seconds"] / CAPACITY["cpu"],
        "sum_of_estimates_s": totals["total_seconds"],
        "critical_path_s": totals["critical_path_seconds"],
        "calibration_units_per_second": round(rate, 1),
        "rounds": rounds,
        "median_planned_makespan_s": med("planned_makespan_s"),
        "median_plan_actual_s": med("plan_actual_s"),
        "median_fifo_actual_s": med("fifo_actual_s"),
    }
    figures["planned_over_default"] = figures["median_planned_makespan_s"] / figures["median_fifo_actual_s"]
    figures["plan_actual_over_default_actual"] = figures["median_plan_actual_s"] / figures["median_fifo_actual_s"]
    figures["actual_over_planned"] = figures["median_plan_actual_s"] / figures["median_planned_makespan_s"]
    return figures


def write(figures: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dispatch.json").write_text(json.dumps(figures, indent=2))
    lines = [
        "# Dispatch benchmark: planned versus Prefect's default (FIFO), one process",
        "",
        f"Pipeline: {figures['components']} components of real CPU work on pool `{figures['pool']['name']}` "
        f"(cpu {figures['pool']['cpu']:g}, mem {figures['pool']['mem_gib']:g} GiB); sum of estimates "
        f"{figures['sum_of_estimates_s']:.1f} s, critical path {figures['critical_path_s']:.1f} s, "
        f"resource bound (core-seconds / cores) {figures['resource_bound_s']:.1f} s (declared estimates).",
        "",
        "| round | planned makespan s | plan: actual s | fifo: actual s | plan status | solve s |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(figures["rounds"], 1):
        lines.append(
            f"| {i} | {r['planned_makespan_s']:.2f} | {r['plan_actual_s']:.2f} | {r['fifo_actual_s']:.2f} "
            f"| {r['plan_status']} | {r['solve_seconds']:.2f} |"
        )
    lines += [
        "",
        f"- planned makespan / default's actual makespan: **{figures['planned_over_default']:.2f}** (target <= 0.8)",
        f"- plan's actual / default's actual: **{figures['plan_actual_over_default_actual']:.2f}**",
        f"- plan's actual / planned: **{figures['actual_over_planned']:.2f}** (target <= 1.15)",
    ]
    chain = figures.get("chain")
    if chain:
        lines += [
            "",
            f"Dispatcher overhead: a chain of {chain['steps']} no-op components, metrics pushed to "
            f"{'a real Pushgateway' if chain['pushgateway'] else 'no Pushgateway (none installed)'}: "
            f"median makespan **{chain['median_makespan_s']:.2f} s**, "
            f"**{chain['median_ms_per_step']:.0f} ms per step** "
            f"(runs: {', '.join(f'{m:.2f}' for m in chain['makespans_s'])} s).",
        ]
    (RESULTS / "dispatch.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
