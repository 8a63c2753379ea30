"""Dask mode's overhead: a planflow run of N trivial components versus a plain Prefect
flow of N trivial tasks, both on the same Dask cluster, side by side in one process.

- planflow: a pipeline of N independent components (each returns its input, tiny
  declared demand) run with `mode="dask"`: planned, dispatched, slots taken, recorded,
  each component a task on the cluster through prefect-dask;
- plain: a Prefect flow on prefect-dask's DaskTaskRunner connected to the same
  scheduler, submitting N trivial tasks (results persisted, each under a key of its
  own, as planflow's are: see bench_overhead.own_result_key).

N = 40 and 400; the two alternate within each round (first one, then the other), at
least 3 rounds, after a warm-up of each. The figures are the median per-round ratios
planflow / plain (`ratio_dask_40`, `ratio_dask_400`; the issue's goal is <= 1.2), the
median times (`planflow_dask_s_<N>`, `prefect_dask_s_<N>`, the names bench_overhead.py's
table reads), each from the flow's call to its run's Completed state, the same until the
call returned (`ratio_call_dask_<N>`, `planflow_dask_call_s_<N>`, `prefect_dask_call_s_<N>`:
0-1 s more, Prefect's heartbeat thread; see bench_overhead.py) and the median time from
the flow run's start to its first release (`first_release_dask_s_<N>`), merged into bench/results/overhead.json
(read-modify-write: the in-process benchmark writes its own keys into the same flat
object, and each writes only its own); every round and the load average go to
bench/results/overhead_dask.md.

Run: `python -m bench.bench_overhead_dask [--rounds 3] [--sizes 40 400]`. It starts a
Prefect server (SQLite, a temporary state folder) and a local Dask cluster (a scheduler
and two workers) of its own, and stops both at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from bench.bench_overhead import SERVER_START_SECONDS, FirstRelease, timed  # imports no Prefect

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORKERS = 2


def trivial_pipeline(n: int):
    from planflow.core.component import component
    from planflow.core.pipeline import Pipeline

    def make(i: int):
        def step(x: int = 1) -> int:
            return x

        step.__name__ = step.__qualname__ = f"trivial_{i:03d}"
        return component(step, cpu=0.001, mem_gib=0.001, est_seconds=0.01)

    return Pipeline(f"bench-dask-trivial-{n}", [make(i) for i in range(n)], description="N trivial components")


def plain_flow(address: str):
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    def own_result_key(context, parameters):  # defined here: pickled by value for the workers
        return f"plain-{context.task_run.flow_run_id}-{context.task_run.name}"  # see bench_overhead.own_result_key

    @task(persist_result=True, cache_key_fn=own_result_key)
    def trivial(x: int) -> int:
        return x

    @flow(name="bench-plain-dask", task_runner=DaskTaskRunner(address=address), persist_result=True)
    def plain(n: int) -> int:
        futures = [trivial.with_options(task_run_name=f"trivial_{i:03d}").submit(1) for i in range(n)]
        return sum(f.result() for f in futures)

    return plain


def measure(sizes: list[int], rounds: int, address: str, first: FirstRelease) -> dict:
    from planflow import to_flow

    figures: dict = {}
    plain = plain_flow(address)
    for n in sizes:
        planflow_flow = to_flow(trivial_pipeline(n))
        runs = {
            "planflow": lambda f=planflow_flow: f(mode="dask", return_state=True),
            "plain": lambda n=n: plain(n, return_state=True),
        }
        for run in runs.values():  # warm-up: imports, the cluster's first tasks, learned durations
            timed(run)
        times: dict[str, list[float]] = {k: [] for k in ("planflow", "plain", "planflow_call", "plain_call")}
        times |= {"first_release": [], "load": []}
        for r in range(rounds):
            for name in ("planflow", "plain") if r % 2 == 0 else ("plain", "planflow"):
                completed, returned, state = timed(runs[name])
                times[name].append(completed)
                times[f"{name}_call"].append(returned)
                if name == "planflow":
                    flow_run_id = str(state.state_details.flow_run_id)
            times["first_release"].append(first.seconds_after_start(flow_run_id))
            times["load"].append(os.getloadavg()[0])
            print(
                f"N={n} round {r + 1}: planflow {times['planflow'][-1]:.2f} s, plain {times['plain'][-1]:.2f} s, "
                f"first release {times['first_release'][-1]:.2f} s, load {times['load'][-1]:.1f}",
                flush=True,
            )
        ratios = [p / q for p, q in zip(times["planflow"], times["plain"], strict=True)]
        call_ratios = [p / q for p, q in zip(times["planflow_call"], times["plain_call"], strict=True)]
        figures[n] = (
            {"planflow_s": times["planflow"], "plain_s": times["plain"], "ratios": ratios}
            | {
                "planflow_call_s": times["planflow_call"],
                "plain_call_s": times["plain_call"],
                "call_ratios": call_ratios,
            }
            | {k: times[k] for k in ("first_release", "load")}
        )
    return figures


def write(figures: dict, rounds: int) -> dict:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "overhead.json"
    try:
        merged = json.loads(path.read_text())
    except (OSError, ValueError):
        merged = {}
    for n, f in figures.items():
        merged[f"ratio_dask_{n}"] = round(statistics.median(f["ratios"]), 3)
        merged[f"planflow_dask_s_{n}"] = round(statistics.median(f["planflow_s"]), 3)
        merged[f"prefect_dask_s_{n}"] = round(statistics.median(f["plain_s"]), 3)
        merged[f"first_release_dask_s_{n}"] = round(statistics.median(f["first_release"]), 3)
        merged[f"ratio_call_dask_{n}"] = round(statistics.median(f["call_ratios"]), 3)
        merged[f"planflow_dask_call_s_{n}"] = round(statistics.median(f["planflow_call_s"]), 3)
        merged[f"prefect_dask_call_s_{n}"] = round(statistics.median(f["plain_call_s"]), 3)
        for old in (f"dask_planflow_{n}_median_s", f"dask_plain_{n}_median_s"):  # this benchmark's former names
            merged.pop(old, None)
    merged["dask_rounds"] = rounds
    merged["dask_workers"] = WORKERS
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    lines = [
        "# Dask mode overhead: planflow run vs plain Prefect flow on DaskTaskRunner",
        "",
        f"Same Dask cluster (a scheduler, {WORKERS} worker processes, 127.0.0.1), same Prefect server, "
        f"one process, alternating, {rounds} rounds after a warm-up. Goal: ratio <= 1.2. Times run from the "
        "flow's call to its run's Completed state; the call returns 0-1 s later (Prefect's heartbeat thread).",
        "",
        "| N | planflow median (s) | plain median (s) | median ratio | first release median (s) |",
        "|---|---|---|---|---|",
    ]
    for n, f in figures.items():
        lines.append(
            f"| {n} | {statistics.median(f['planflow_s']):.2f} | {statistics.median(f['plain_s']):.2f} | "
            f"{statistics.median(f['ratios']):.2f} | {statistics.median(f['first_release']):.2f} |"
        )
    lines += [
        "",
        "| N | round | planflow (s) | plain (s) | ratio | first release (s) | until the call returned: planflow (s) "
        "| plain (s) | load average (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, f in figures.items():
        columns = (f["planflow_s"], f["plain_s"], f["ratios"], f["first_release"])
        columns += (f["planflow_call_s"], f["plain_call_s"], f["load"])
        for r, cells in enumerate(zip(*columns, strict=True)):
            lines.append(f"| {n} | {r + 1} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    (RESULTS / "overhead_dask.md").write_text("\n".join(lines) + "\n")
    return merged


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 400])
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds: at least 3")

    from bench.tempserver import TempServer

    class Server(TempServer):
        def start(self) -> None:  # a loaded machine can take minutes to start a server
            from planflow.ops import server as stack

            stack.up(self.paths, port=self.port, db=self.db, timeout=SERVER_START_SECONDS)

    with Server("overhead-dask"):  # before Prefect is imported
        from planflow.ops import dask as cluster
        from planflow.prefect.blocks import ensure_defaults
        from planflow.prefect.blocks.registry import load_pools
        from planflow.runtime.events import subscribe
        from planflow.settings import StatePaths

        ensure_defaults()
        paths = StatePaths(Path(tempfile.mkdtemp(prefix="planflow-bench-dask-")))
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        # Each worker offers the whole `local` pool: the plan, not the split, is what limits.
        sizing = {"local": load_pools()["local"].capacity()}
        state = cluster.up(paths, {k: {r: v * WORKERS for r, v in c.items()} for k, c in sizing.items()}, WORKERS)
        os.environ["PLANFLOW_DASK_ADDRESS"] = state.address
        first = FirstRelease()
        unsubscribe = subscribe(first.reporter)
        try:
            figures = measure(args.sizes, args.rounds, state.address, first)
        finally:
            unsubscribe()
            cluster.down(paths)
    merged = write(figures, args.rounds)
    print(json.dumps({k: v for k, v in merged.items() if k.startswith("ratio_dask")}))
    return merged


if __name__ == "__main__":
    main()
