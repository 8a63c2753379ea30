"""Planner benchmarks: PSPLIB j30, multi-mode j10, random pipelines of 100/300/1000 tasks.

Run: ``python -m bench.bench_planner`` (all; j30 takes ~10+ minutes) or a quick subset:
``python -m bench.bench_planner --j30-limit 40 --mm-limit 40 --scale-sizes 100,300``.
Writes bench/results/planner.md and planner.json (+ per-instance CSVs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # allow `python bench/bench_planner.py`
    sys.path.insert(0, str(ROOT))

from planflow.planner import PlannerOptions, plan_violations, solve  # noqa: E402
from planflow.planner.generate import random_pipeline  # noqa: E402
from planflow.planner.heuristics import priorities, rule_lists, serial_sgs  # noqa: E402
from planflow.planner.instance import compile_problem  # noqa: E402
from planflow.planner.problem import validate_problem  # noqa: E402
from planflow.planner.psplib import read_optima, read_psplib, write_csv  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def subset(files: list[Path], limit: int | None) -> list[Path]:
    if not limit or limit >= len(files):
        return files
    step = len(files) / limit
    return [files[int(i * step)] for i in range(limit)]


def single_pass_best(problem) -> float:
    """Baseline: best of the plain LFT/LST/MTS/GRPW serial SGS passes (no improvement)."""
    validate_problem(problem)
    inst = compile_problem(problem)
    pr = priorities(inst)
    return min(serial_sgs(inst, lst).makespan for lst in rule_lists(inst, pr).values())


def run_set(
    files: list[Path], optima: dict[str, float], time_limit: float, solver: str, tag: str
) -> tuple[list[dict], dict]:
    rows = []
    for i, f in enumerate(files):
        problem = read_psplib(f)
        plan = solve(problem, PlannerOptions(solver=solver, time_limit_s=time_limit))
        bad = plan_violations(problem, plan)
        opt = optima.get(f.stem)
        # Single-pass SGS only applies to single-mode sets (no non-renewable budgets).
        sp = single_pass_best(problem) if not problem.nonrenewable_capacity else None
        rows.append(
            {
                "instance": f.stem,
                "jobs": len(problem.tasks) - 2,
                "makespan": plan.makespan,
                "lower_bound": plan.lower_bound,
                "status": plan.status,
                "solver": plan.solver,
                "solve_seconds": round(plan.solve_seconds, 4),
                "heuristic_makespan": plan.heuristic_makespan,
                "single_pass_makespan": sp,
                "optimum": opt,
                "deviation_pct": None if opt is None else round(100 * (plan.makespan - opt) / opt, 4),
                "valid": not bad,
            }
        )
        print(f"[{tag} {i + 1}/{len(files)}] {rows[-1]}", flush=True)
    return rows, summarise(rows)


def load_csv(path: Path) -> list[dict]:
    import csv

    def num(v: str):
        if v in ("", "None"):
            return None
        if v in ("True", "False"):
            return v == "True"
        try:
            return float(v)
        except ValueError:
            return v

    with path.open() as f:
        return [{k: num(v) for k, v in r.items()} for r in csv.DictReader(f)]


def summarise(rows: list[dict]) -> dict:
    known = [r for r in rows if r["optimum"] is not None]

    def dev(key: str) -> list[float]:
        return [100 * (r[key] - r["optimum"]) / r["optimum"] for r in known if r[key] is not None]

    times = [r["solve_seconds"] for r in rows]
    out = {
        "instances": len(rows),
        "valid_plans": sum(r["valid"] for r in rows),
        "optimum_found": sum(1 for r in known if r["makespan"] <= r["optimum"] + 1e-6),
        "proven_optimal": sum(1 for r in rows if r["status"] == "optimal"),
        "mean_deviation_pct": round(statistics.mean(dev("makespan")), 4) if known else None,
        "max_deviation_pct": round(max(dev("makespan")), 4) if known else None,
        "mean_seconds": round(statistics.mean(times), 3) if times else None,
        "max_seconds": round(max(times), 3) if times else None,
        "heuristic_optimum_found": sum(1 for r in known if r["heuristic_makespan"] <= r["optimum"] + 1e-6),
        "heuristic_mean_deviation_pct": round(statistics.mean(dev("heuristic_makespan")), 4) if known else None,
        "heuristic_max_deviation_pct": round(max(dev("heuristic_makespan")), 4) if known else None,
    }
    sp = dev("single_pass_makespan")
    if sp:
        out["single_pass_optimum_found"] = sum(1 for x in sp if x <= 1e-9)
        out["single_pass_mean_deviation_pct"] = round(statistics.mean(sp), 4)
        out["single_pass_max_deviation_pct"] = round(max(sp), 4)
    return out


def run_scale(sizes: list[int], time_limit: float, solver: str) -> list[dict]:
    rows = []
    for n in sizes:
        p = random_pipeline(n, seed=1)
        t = time.perf_counter()
        first = solve(p, PlannerOptions(solver=solver, time_limit_s=0.01))
        t_first = time.perf_counter() - t
        limit = time_limit if n >= 1000 else min(time_limit, 10.0)
        t = time.perf_counter()
        plan = solve(p, PlannerOptions(solver=solver, time_limit_s=limit))
        t_full = time.perf_counter() - t
        rows.append(
            {
                "components": n,
                "time_limit_s": limit,
                "first_plan_seconds": round(t_first, 3),
                "first_makespan": round(first.makespan, 2),
                "first_gap": round(first.gap, 4),
                "seconds": round(t_full, 3),
                "makespan": round(plan.makespan, 2),
                "lower_bound": round(plan.lower_bound, 2),
                "gap": round(plan.gap, 4),
                "status": plan.status,
                "solver": plan.solver,
                "notes": "; ".join(plan.notes),
                "valid": not plan_violations(p, plan),
            }
        )
        print(f"[scale] {rows[-1]}", flush=True)
    return rows


def to_markdown(res: dict) -> str:
    lines = [
        "# Planner benchmark",
        "",
        f"Machine: 2 cores; one solver thread; solver {res['solver']}; "
        f"time limit {res['time_limit_s']} s per instance.",
        "",
    ]
    if res.get("note"):
        lines += [res["note"], ""]
    for key, title in (("j30", "PSPLIB j30 (single mode)"), ("mm_j10", "PSPLIB mm-j10 (multi-mode)")):
        if key not in res:
            continue
        s = res[key]
        lines += [
            f"## {title}: {s['instances']} instances",
            "",
            "| method | optimum found | proven optimal | mean dev % | max dev % | mean s | max s |",
            "|---|---|---|---|---|---|---|",
            f"| planner (heuristics + MILP) | {s['optimum_found']} | {s['proven_optimal']} | "
            f"{s['mean_deviation_pct']} | {s['max_deviation_pct']} | {s['mean_seconds']} | {s['max_seconds']} |",
            f"| list scheduling + FBI + GA alone (heuristic_makespan) | {s['heuristic_optimum_found']} | - | "
            f"{s['heuristic_mean_deviation_pct']} | {s['heuristic_max_deviation_pct']} | - | - |",
        ]
        if "single_pass_mean_deviation_pct" in s:
            lines.append(
                f"| best of 4 single-pass priority rules (LFT/LST/MTS/GRPW) | "
                f"{s['single_pass_optimum_found']} | - | {s['single_pass_mean_deviation_pct']} | "
                f"{s['single_pass_max_deviation_pct']} | - | - |"
            )
        lines += ["", f"Valid plans (independent checker): {s['valid_plans']}/{s['instances']}", ""]
    if "scale" in res:
        lines += [
            "## Random layered pipelines (2 pools, cpu/gpu/mem, non-integer durations)",
            "",
            "| components | first plan s | first gap | limit s | seconds | makespan | lower bound | gap | status "
            "| notes |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["scale"]:
            lines.append(
                f"| {r['components']} | {r['first_plan_seconds']} | {r['first_gap']} | {r['time_limit_s']} | "
                f"{r['seconds']} | {r['makespan']} | {r['lower_bound']} | {r['gap']} | {r['status']} | {r['notes']} |"
            )
        lines += ["", "Gap is against max(critical path, resource energy) - the true gap may be smaller.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--solver", default="highs")
    ap.add_argument("--j30-limit", type=int, default=None, help="evenly spaced subset of j30")
    ap.add_argument("--mm-limit", type=int, default=None, help="evenly spaced subset of mm-j10")
    ap.add_argument("--scale-sizes", default="100,300,1000")
    ap.add_argument("--scale-time-limit", type=float, default=30.0)
    ap.add_argument("--skip", default="", help="comma list of j30,mm,scale to skip")
    ap.add_argument("--out", default=str(RESULTS / "planner"))
    ap.add_argument("--note", default="", help="free text printed under the title")
    ap.add_argument(
        "--reuse",
        default="",
        help="comma list of j30,mm,scale to take from earlier result files "
        "(<out>_j30.csv, <out>_mm_j10.csv, <out>.json) instead of running",
    )
    a = ap.parse_args(argv)
    skip = set(filter(None, a.skip.split(",")))
    d = Path(os.environ.get("PLANFLOW_PSPLIB_DIR") or ROOT.parent / "shared" / "psplib")
    res: dict = {"solver": a.solver, "time_limit_s": a.time_limit, "note": a.note}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    reuse = set(filter(None, a.reuse.split(",")))
    prev = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    if "j30" in reuse:
        res["j30"] = summarise(load_csv(out.with_name(out.name + "_j30.csv")))
        skip.add("j30")
    if "mm" in reuse:
        res["mm_j10"] = summarise(load_csv(out.with_name(out.name + "_mm_j10.csv")))
        skip.add("mm")
    if "scale" in reuse and "scale" in prev:
        res["scale"] = prev["scale"]
        skip.add("scale")
    if "j30" not in skip:
        files = subset(sorted((d / "j30").glob("*.sm")), a.j30_limit)
        rows, res["j30"] = run_set(files, read_optima(d / "j30opt.sm"), a.time_limit, a.solver, "j30")
        write_csv(rows, out.with_name(out.name + "_j30.csv"))
    if "mm" not in skip:
        files = subset(sorted((d / "mm-j10").glob("*.mm")), a.mm_limit)
        rows, res["mm_j10"] = run_set(files, read_optima(d / "mm-j10-reference.csv"), a.time_limit, a.solver, "mm")
        write_csv(rows, out.with_name(out.name + "_mm_j10.csv"))
    if "scale" not in skip:
        sizes = [int(x) for x in a.scale_sizes.split(",") if x]
        res["scale"] = run_scale(sizes, a.scale_time_limit, a.solver)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    out.with_suffix(".md").write_text(to_markdown(res))
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
