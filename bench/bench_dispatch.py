"""A real run, planned versus Prefect's default, side by side in one process.

A synthetic AI pipeline of 30 components doing real CPU work (single-threaded
numpy matrix products, a fixed amount each, calibrated once) runs in-process on
a pool smaller than its peak demand (2 cores, 3 GiB), twice per round:

- plan: the planner's order and pools (`policy="plan"`);
- fifo: what Prefect does without a plan: every ready component is submitted, and
  capacity is granted first come, first served (`policy="fifo"`).

A warm-up run first (FIFO) gives every component an actual duration, so the plans
use learned estimates, as they do after a pipeline's first run. Rounds alternate
the two policies so that machine noise hits both. Figures: the planned
makespan, each policy's actual makespan, and the ratios the issue targets
(planned / default <= 0.8, actual / planned <= 1.15).

Run: `python -m bench.bench_dispatch [--rounds 2]`. It starts a Prefect server of
its own (SQLite, a temporary state folder) and stops it at the end, so the
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
    """30 components: an ingest step and its quality checks; a fan-out of 16 short feature steps (1 core);
    3 model branches each of prep (2 cores) -> train (2 cores, long) -> evaluate;
    a join that compares the models, and a report. Memory 0.25-2.5 GiB each."""
    from flows.component import component
    from flows.pipeline import Pipeline, Step

    rng = random.Random(seed)
    steps: list[Step] = []

    def add(name: str, seconds: float, cpu: int, mem: float, after: tuple[str, ...]) -> None:
        comp = component(work, name=name, cpu=cpu, mem_gib=mem, est_seconds=seconds, pools=[POOL])
        steps.append(Step(name, comp, after=after, params={"units": max(1, int(seconds * rate)), "threads": cpu}))

    add("ingest", 1.0, 1, 1.0, ())
    add("quality_checks", 0.8, 1, 0.5, ("ingest",))
    features = []
    for i in range(16):
        name = f"feature_{i:02d}"
        add(name, round(rng.uniform(0.4, 1.2), 2), 1, round(rng.uniform(0.25, 1.0), 2), ("ingest",))
        features.append(name)
    evals = []
    for b in range(3):
        inputs = tuple(rng.sample(features, 3))
        add(f"prep_{b}", round(rng.uniform(1.0, 2.0), 2), 2, 1.5, ("ingest",))
        add(f"train_{b}", round(rng.uniform(3.0, 5.0), 2), 2, 2.5, (f"prep_{b}", *inputs))
        add(f"evaluate_{b}", round(rng.uniform(0.5, 1.0), 2), 1, 1.0, (f"train_{b}",))
        evals.append(f"evaluate_{b}")
    add("select_model", 0.5, 1, 0.5, tuple(evals))
    add("batch_inference", 1.5, 2, 2.0, ("select_model",))
    add("report", 0.3, 1, 0.25, ("batch_inference", "quality_checks", *features[-2:]))
    return Pipeline("bench-synthetic-30", steps, description="synthetic AI pipeline for the dispatch benchmark")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    import os
    import tempfile

    from planflow import stack
    from planflow.config import StatePaths, apply_client_env, server_url

    paths = StatePaths(Path(tempfile.mkdtemp(prefix="planflow-bench-dispatch-")))
    port = stack.free_port()
    os.environ["PREFECT_API_URL"] = server_url("127.0.0.1", port)  # before Prefect is imported
    apply_client_env(paths)
    stack.up(paths, port=port)
    try:
        from blocks import ResourcePool, ensure_defaults

        ensure_defaults()
        ResourcePool(work_pool="local-process", cpu=CAPACITY["cpu"],
                     mem_gib=CAPACITY["mem_gib"]).save(POOL, overwrite=True)
        rate, pipeline, rounds = _rounds(args.rounds)
    finally:
        stack.down(paths)
    write(_figures(rate, pipeline, rounds))
    return json.loads((RESULTS / "dispatch.json").read_text())


def _rounds(count: int):
    rate = _units_per_second()
    pipeline = synthetic_pipeline(rate)
    assert len(pipeline.steps) == 30, len(pipeline.steps)
    flow = pipeline.flow()
    flow(params={}, policy="fifo", local_pool=POOL)  # warm-up: durations for the estimates
    rounds = []
    for r in range(count):
        order = ("plan", "fifo") if r % 2 == 0 else ("fifo", "plan")
        result = {}
        for policy in order:
            result[policy] = flow(params={}, policy=policy, local_pool=POOL)
        plan = result["plan"]["plan"]
        rounds.append({
            "planned_makespan_s": plan["makespan_s"],
            "lower_bound_s": plan["lower_bound_s"],
            "plan_status": plan["status"],
            "solve_seconds": plan["solve_seconds"],
            "plan_actual_s": result["plan"]["makespan_s"],
            "fifo_actual_s": result["fifo"]["makespan_s"],
        })
        print(rounds[-1], flush=True)
    return rate, pipeline, rounds


def _figures(rate: float, pipeline, rounds: list[dict]) -> dict:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    totals = pipeline.totals()
    figures = {
        "components": len(pipeline.steps),
        "pool": {"name": POOL, **CAPACITY},
        "peak_demand_cpu_if_all_ready": sum(s.spec.cpu for s in pipeline.steps.values() if s.name.startswith("feature")),
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
        f"{figures['sum_of_estimates_s']:.1f} s, critical path {figures['critical_path_s']:.1f} s.",
        "",
        "| round | planned makespan s | plan: actual s | fifo: actual s | plan status | solve s |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(figures["rounds"], 1):
        lines.append(f"| {i} | {r['planned_makespan_s']:.2f} | {r['plan_actual_s']:.2f} | {r['fifo_actual_s']:.2f} "
                     f"| {r['plan_status']} | {r['solve_seconds']:.2f} |")
    lines += [
        "",
        f"- planned makespan / default's actual makespan: **{figures['planned_over_default']:.2f}** (target <= 0.8)",
        f"- plan's actual / default's actual: **{figures['plan_actual_over_default_actual']:.2f}**",
        f"- plan's actual / planned: **{figures['actual_over_planned']:.2f}** (target <= 1.15)",
    ]
    (RESULTS / "dispatch.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
