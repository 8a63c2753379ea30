"""Small plans proven: time until ``solve()`` returns a proven optimum (gap 0) for the example
pipelines and for random 5/10/15-component instances (three pools, capacity steps,
real-valued durations), with the branch and bound (exact.py) and without it (the MILP
path, ``exact_max_tasks=0``: the planner before this change).

Run: ``python -m bench.bench_exact [--seeds 40] [--baseline-seeds 10]``.
Writes bench/results/exact.md and exact.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # allow `python bench/bench_exact.py`
    sys.path.insert(0, str(ROOT))

from planflow.core.pipeline import Pipeline, import_object  # noqa: E402
from planflow.planner import PlannerOptions, Problem, plan_violations, solve  # noqa: E402
from planflow.planner.generate import random_small, six_components  # noqa: E402
from planflow.runtime.planning import build_problem  # noqa: E402

RESULTS = ROOT / "bench" / "results"
EXAMPLES = {
    "predictive-maintenance": "flows.predictive_maintenance.flow:pipeline",
    "image-classification": "flows.image_classification.flow:pipeline",
    "fraud-risk": "flows.fraud_risk.flow:pipeline",
}
# A 2-core machine (the ResourcePool blocks' `machine`), and the example cluster pool.
POOLS = {
    "local": ({"cpu": 2, "gpu": 0, "mem_gib": 8}, 0.0),
    "docker": ({"cpu": 2, "gpu": 0, "mem_gib": 8}, 0.0),
    "kubernetes": ({"cpu": 32, "gpu": 4, "mem_gib": 128}, 4.0),
}


def example_problems(seed: int = 0) -> dict[str, Problem]:
    """Each example pipeline on the local pool (in-process) and, where its steps allow,
    on all three pools (distributed); durations declared, and "learned" (declared times
    a random 0.7-1.6, like the medians of real runs)."""
    pipelines = {name: import_object(path) for name, path in EXAMPLES.items()}
    for path in sorted((ROOT / "pipelines").glob("*.yaml")):
        pipelines[path.stem] = Pipeline.from_yaml(path)
    rng = random.Random(seed)
    out: dict[str, Problem] = {}
    for name, pipeline in pipelines.items():
        for where, pools in (("local", ["local"]), ("3 pools", list(POOLS))):
            caps = {p: POOLS[p][0] for p in pools}
            costs = {p: POOLS[p][1] for p in pools}
            try:
                problem, _ = build_problem(pipeline, caps, costs, known_pools=set(POOLS))
            except ValueError:  # a step pinned to a pool this variant leaves out
                continue
            out[f"{name} ({where}, declared)"] = problem
            tasks = tuple(
                replace(
                    t, modes=tuple(replace(m, duration=round(m.duration * rng.uniform(0.7, 1.6), 3)) for m in t.modes)
                )
                for t in problem.tasks
            )
            out[f"{name} ({where}, learned)"] = replace(problem, tasks=tasks)
    out["six components, one 2-CPU pool (issue 14's shape)"] = six_components()
    return out


def run(problem: Problem, options: PlannerOptions) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    plan = solve(problem, options)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "tasks": len(problem.tasks),
        "seconds": round(seconds, 4),
        "cpu_seconds": round(cpu, 4),
        "status": plan.status,
        "solver": plan.solver,
        "gap": round(plan.gap, 6),
        "makespan": plan.makespan,
        "valid": not plan_violations(problem, plan),
    }


def _quantiles(values: list[float], prefix: str) -> dict:
    v = sorted(values)
    return {
        f"median_{prefix}": round(statistics.median(v), 4),
        f"p95_{prefix}": round(v[min(len(v) - 1, int(0.95 * len(v)))], 4),
        f"max_{prefix}": round(v[-1], 4),
    }


def summary(rows: list[dict]) -> dict:
    proven = [r for r in rows if r["status"] == "optimal"]
    return {
        "instances": len(rows),
        "proven": len(proven),
        "valid": sum(r["valid"] for r in rows),
        **_quantiles([r["seconds"] for r in rows], "s"),
        **_quantiles([r["cpu_seconds"] for r in rows], "cpu_s"),
        "mean_gap_pct": round(100 * statistics.mean(r["gap"] for r in rows), 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=40, help="random instances per size")
    ap.add_argument("--baseline-seeds", type=int, default=10, help="of those, also planned without the B&B")
    ap.add_argument("--sizes", default="5,10,15")
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--out", default=str(RESULTS / "exact"))
    args = ap.parse_args(argv)
    now = PlannerOptions(time_limit_s=args.time_limit)
    before = PlannerOptions(time_limit_s=args.time_limit, exact_max_tasks=0)
    result: dict = {"examples": {}, "random": {}, "time_limit_s": args.time_limit}

    for name, problem in example_problems().items():
        row = {"now": run(problem, now), "before": run(problem, before)}
        result["examples"][name] = row
        print(f"[example] {name}: {row}", flush=True)
    for n in (int(x) for x in args.sizes.split(",")):
        rows, base = [], []
        for seed in range(args.seeds):
            problem = random_small(n, seed=10_000 + seed)
            rows.append(run(problem, now))
            if seed < args.baseline_seeds:
                base.append(run(problem, before))
            print(f"[random {n}] seed {seed}: {rows[-1]}", flush=True)
        result["random"][n] = {"now": summary(rows), "before": summary(base) if base else None}
        print(f"[random {n}] {result['random'][n]}", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(report(result))
    print(report(result))
    return 0


def report(result: dict) -> str:
    lines = [
        "# Small plans proven (bench/bench_exact.py)",
        "",
        f"Wall time of `solve()` (limit {result['time_limit_s']:g} s), 'now' with the branch and bound, "
        "'before' without it (`exact_max_tasks=0`).",
        "",
        "| example | tasks | now: status, s | before: status, gap, s |",
        "|---|---|---|---|",
    ]
    for name, row in result["examples"].items():
        a, b = row["now"], row["before"]
        lines.append(
            f"| {name} | {a['tasks']} | {a['status']}, {a['seconds']:.3f} | "
            f"{b['status']}, {100 * b['gap']:.1f} %, {b['seconds']:.2f} |"
        )
    lines += [
        "",
        "Wall seconds depend on the machine's load (other processes share its 2 cores); CPU seconds "
        "(`time.process_time`) are this process's own work.",
        "",
        "| random, tasks | instances | proven | median s | p95 s | max s | CPU s: median, p95, max "
        "| before: proven, median s, p95 s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, r in result["random"].items():
        a, b = r["now"], r["before"]
        prior = f"{b['proven']}/{b['instances']}, {b['median_s']:.2f}, {b['p95_s']:.2f}" if b else "-"
        lines.append(
            f"| {n} | {a['instances']} | {a['proven']} | {a['median_s']:.3f} | {a['p95_s']:.3f} | "
            f"{a['max_s']:.3f} | {a['median_cpu_s']:.3f}, {a['p95_cpu_s']:.3f}, {a['max_cpu_s']:.3f} | {prior} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
