"""Are the fleet benchmark's components honest? CPU seconds used against those declared.

A component declared `cpu=1` should keep one core busy while it runs: then running
more of them than the pool has cores cannot finish sooner (the work is the same), and
oversubscription cannot "win" by overlapping sleeps or waits. For each pipeline of the
fleet burst this runs every component once, alone, in topological order, in this
process (no Prefect: only the work), and reports its wall seconds, the process's CPU
seconds it used (all threads: BLAS, polars, scikit-learn), the seconds its threads
were runnable (on a CPU or queued for one: a loaded machine does not hide a busy step),
and `honesty` = runnable seconds / (declared cpu x wall seconds). 1.0 means it kept
busy the cores it declared; well below 1 means it slept, waited or used fewer cores
than declared.

Run: `python -m bench.fleet_honesty [real|honest]` (the examples' own steps, or the
benchmark's CPU-bound stand-ins; prints a table and JSON; writes nothing).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def runnable_seconds() -> float:
    """Seconds the process's live threads were on a CPU or waiting in the run queue for
    one (/proc/self/task/*/schedstat): what they would have run on an idle machine, so
    that a loaded machine does not make a busy step look idle. Threads that ended since
    the last read are missing (their CPU time is still in `cpu_seconds`)."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            on_cpu, waiting, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        total += int(on_cpu) + int(waiting)
    return total / 1e9


def measure(entrypoint: str) -> list[dict]:
    """Each component of the pipeline behind `entrypoint`, run once: its figures."""
    from planflow.core.pipeline import import_object

    path, attribute = entrypoint.split(":")
    pipeline = import_object(f"{path.removesuffix('.py').replace('/', '.')}:{attribute}").pipeline
    params = pipeline.resolve_params()
    outputs: dict = {}
    rows = []
    for name in pipeline.topological_order():
        step = pipeline.steps[name]
        kwargs = pipeline.step_kwargs(name, params, outputs)
        cpu0, run0, wall0 = cpu_seconds(), runnable_seconds(), time.perf_counter()
        outputs[name] = step.component.fn(**kwargs)
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        runnable = max(cpu, runnable_seconds() - run0)
        declared = float(step.spec.demand().get("cpu", 0.0))
        rows.append(
            {
                "component": name,
                "declared_cpu": declared,
                "est_seconds": step.spec.est_seconds,
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "runnable_s": round(runnable, 3),
                "honesty": round(runnable / (declared * wall), 3) if declared and wall > 0 else None,
            }
        )
    return rows


def main() -> dict:
    from bench.bench_dispatch import _units_per_second
    from bench.bench_fleet import WORKLOADS
    from bench.fleet_flows import RATE_ENV

    os.environ.setdefault(RATE_ENV, f"{_units_per_second() * 0.5:.3f}")  # as the benchmark's default scale
    found = {}
    workload = sys.argv[1] if len(sys.argv) > 1 else "real"
    for name, entrypoint in WORKLOADS[workload].items():
        rows = measure(entrypoint)
        declared = sum(r["declared_cpu"] * r["wall_s"] for r in rows)
        used = sum(r["runnable_s"] for r in rows)
        found[name] = {
            "components": rows,
            "declared_cpu_s": round(declared, 2),
            "used_cpu_s": round(used, 2),
            "honesty": round(used / declared, 3) if declared else None,
        }
        print(f"{name}: declared cpu x wall {declared:.1f} s, runnable {used:.1f} s, honesty {used / declared:.2f}")
        for r in rows:
            print(
                f"  {r['component']:<24} cpu={r['declared_cpu']:g} est={r['est_seconds']:>5} s "
                f"wall={r['wall_s']:>6.2f} s cpu_s={r['cpu_s']:>6.2f} runnable_s={r['runnable_s']:>6.2f} "
                f"honesty={r['honesty']}"
            )
    found["meta"] = {"cpus": os.cpu_count(), "load": os.getloadavg()}
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "components"} for k, v in found.items()}))
    return found


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
