"""What planflow costs per component, against a plain Prefect flow, side by side in one process.

A planflow run of N trivial components (each returns its input; all ready at once, all
fitting their pool together) against a plain Prefect flow submitting N trivial tasks,
with the same ThreadPoolTaskRunner size and result persistence (each task's result under
a key of its own, as each step's is: own_result_key), on the same server, in
the same process, alternating, `--rounds` rounds after one warm-up of each. N = 40 and
400 by default. The planflow runs take their pool's shared slots (the default,
`PLANFLOW_SHARED_SLOTS=true`), so the figure includes the cross-run capacity guarantee.

Figures (a flat JSON object, read-modify-write so bench_overhead_dask.py can add its
keys to the same file):

- `ratio_inprocess_<N>`: median over rounds of planflow's time / the plain flow's time,
  each taken from the flow's call to its flow run's Completed state (the state's own
  timestamp, as the Prefect UI shows it);
- `planflow_s_<N>`, `prefect_s_<N>`: those median times;
- `ratio_call_inprocess_<N>`, `planflow_call_s_<N>`, `prefect_call_s_<N>`: the same for the
  time until the call returns. After its Completed state, Prefect's flow engine joins its
  heartbeat thread (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, on by default), which sleeps in
  whole seconds: every call returns 0-1 s after its run completed, at the next whole
  second since the run's start, whatever the flow. That rounding, the same code for both
  flows, is kept out of the ratio and shown here;
- `first_release_s_<N>`: median time from the flow run's start (the server's Running
  state) to the first component's release by the dispatcher;
- `quiet_wait_s_<N>`, `quiet_timeouts_<N>`: before each timed run the benchmark waits
  until the Prefect server is quiet (`settle`: less than 10 ms of its CPU over 0.25 s, at
  most 20 s), so that neither flow is timed in the tail of the other (the server still
  recording the last run's task runs from their events, planflow's writes after its
  final state): the median wait and the waits that ran out (`--no-quiet`: none, as
  before 2026-12-05);
- before each timed run the benchmark's process makes a full garbage collection
  (`gc.collect()`): a full collection due in the middle of a run of 40 took 0.11-0.12 s
  of its 0.4-0.6 s (measured with gc.callbacks on the plain flow, about one run in eight),
  whichever flow it fell on;
- `planflow_requests_<N>`, `prefect_requests_<N>`: the median number of requests the
  Prefect server took for one run of each (its access log, server_requests.py), from the
  call until the server was quiet after it (a run's writes after its final state
  included); steadier than the times, and on this server each costs it 4-25 ms of CPU;
- `busy_503_<N>`: requests the server answered 503 (a retryable database error, on SQLite
  "database is locked") over all rounds of N, counted in the server's log (the server is
  started with `PREFECT_SERVER_LOG_RETRYABLE_ERRORS=true`; each is a client back-off of
  2 s or more).

Run: `python -m bench.bench_overhead [--sizes 40 400] [--rounds 3] [--db sqlite|postgres]
[--profile FILE]`. It starts a Prefect server of its own (SQLite by default, a temporary
state folder) and stops it at the end. `--profile FILE` also writes a cProfile of one more planflow run of the first
size (the flow's thread: the dispatcher's path). Writes bench/results/overhead.json and .md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.fleet_measure import SETTLE_SECONDS, settle
from bench.server_requests import count_requests, log_offset

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
POOL = "bench-overhead"
CAPACITY = {"cpu": 2.0, "mem_gib": 4.0}  # N components of 1 millicore and 1 MiB all fit
SERVER_START_SECONDS = 600.0
BUSY_LINE = "Encountered retryable exception in request"  # Prefect logs each 503's cause so


def busy_answers(log: Path) -> int:
    """503s the server logged so far (a missing log: none yet)."""
    return log.read_text(errors="replace").count(BUSY_LINE) if log.exists() else 0


def identity(x: int = 1) -> int:
    return x


def planflow_flow(n: int) -> Any:
    from planflow import to_flow
    from planflow.core.component import component
    from planflow.core.pipeline import Pipeline, Step

    comp = component(identity, cpu=0.001, mem_gib=0.001, est_seconds=0.05, pools=[POOL])
    steps = [Step(f"c{i:03d}", comp) for i in range(n)]
    return to_flow(Pipeline(f"bench-overhead-{n}", steps, description="N trivial components"))


def own_result_key(context: Any, parameters: dict[str, Any]) -> str:
    """A plain task's cache key: its own run's, as each planflow step's result is kept under
    its own key (`planflow-<flow run>-<step>-<code>`). Prefect's default key (the inputs, the
    task's source, the flow run) is the same for N tasks of one function given the same
    input: all but the first would be read back from the first's result instead of run and
    persisted (until 2026-12-05 the plain flow here did that, 39 of its 40 tasks Cached)."""
    return f"plain-{context.task_run.flow_run_id}-{context.task_run.name}"


def prefect_flow(n: int) -> Any:
    """The same work as a plain Prefect flow: the task runner planflow's flow gets, each
    task's result persisted under its own key (own_result_key)."""
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    plain = task(identity, persist_result=True, cache_key_fn=own_result_key)

    runner = ThreadPoolTaskRunner(max_workers=max(4, min(64, n)))

    @flow(name=f"bench-plain-{n}", task_runner=runner, persist_result=True)
    def plain_flow(x: int = 1) -> list[int]:
        futures = [plain.with_options(name=f"c{i:03d}").submit(x) for i in range(n)]
        return [f.result() for f in futures]

    return plain_flow


class FirstRelease:
    """A planflow reporter: the Unix time of each run's first release (the event's time is
    taken on the dispatcher's thread, when it releases the step)."""

    def __init__(self) -> None:
        from planflow.runtime.events import Reporter

        outer = self

        class _Reporter(Reporter):
            def on_step(self, event: Any) -> None:
                if event.kind == "started":
                    run = event.run.flow_run_id
                    outer.first[run] = min(outer.first.get(run, event.at), event.at)

        self.first: dict[str, float] = {}
        self.reporter = _Reporter()

    def seconds_after_start(self, flow_run_id: str) -> float:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            started = client.read_flow_run(flow_run_id).start_time
        return self.first[flow_run_id] - started.timestamp()


def timed(call: Any) -> tuple[float, float, Any]:
    """Call `call` (a flow called with `return_state=True`): the seconds from the call to
    its run's Completed state, the seconds until it returned, and the state."""
    started_unix, started = time.time(), time.perf_counter()
    state = call()
    returned = time.perf_counter() - started
    if not state.is_completed():
        raise RuntimeError(f"the benchmark's flow run ended {state.type.value}, not Completed: {state.message}")
    return state.timestamp.timestamp() - started_unix, returned, state


def measure(n: int, rounds: int, first: FirstRelease, log: Path, quiet: bool = True) -> dict[str, float]:
    ours, plain = planflow_flow(n), prefect_flow(n)
    ours(local_pool=POOL)  # warm-up of each: imports, the first plan, block types
    plain()
    rows = []
    waits: list[float | None] = []
    for r in range(rounds):
        result: dict[str, float] = {}
        busy_before = busy_answers(log)
        for kind in ("planflow", "prefect") if r % 2 == 0 else ("prefect", "planflow"):
            gc.collect()  # a full collection now, not one due in the middle of the timed run
            if quiet:  # each run on a quiet server, not in the tail of the one before
                waits.append(settle())
                if waits[-1] is None:  # counted in quiet_timeouts_<N>; said now too
                    print(f"N={n} round {r + 1}: the server was not quiet after {SETTLE_SECONDS:.0f} s", flush=True)
            log_start = log_offset(log)
            if kind == "planflow":
                result["planflow_s"], result["planflow_call_s"], state = timed(
                    lambda: ours(local_pool=POOL, return_state=True)
                )
            else:
                result["prefect_s"], result["prefect_call_s"], state = timed(lambda: plain(return_state=True))
            # the run's requests, its writes after the final state included (once the server is quiet)
            settle()
            result[f"{kind}_requests"] = sum(count_requests(log, log_start).values())
            if kind == "planflow":
                result["first_release_s"] = first.seconds_after_start(str(state.state_details.flow_run_id))
        result["ratio"] = result["planflow_s"] / result["prefect_s"]
        result["ratio_call"] = result["planflow_call_s"] / result["prefect_call_s"]
        result["busy_503"] = busy_answers(log) - busy_before
        rows.append(result)
        print(f"N={n} round {r + 1}: {result}", flush=True)
    return {
        f"ratio_inprocess_{n}": round(statistics.median(x["ratio"] for x in rows), 3),
        f"planflow_s_{n}": round(statistics.median(x["planflow_s"] for x in rows), 3),
        f"prefect_s_{n}": round(statistics.median(x["prefect_s"] for x in rows), 3),
        f"first_release_s_{n}": round(statistics.median(x["first_release_s"] for x in rows), 3),
        f"ratio_call_inprocess_{n}": round(statistics.median(x["ratio_call"] for x in rows), 3),
        f"planflow_call_s_{n}": round(statistics.median(x["planflow_call_s"] for x in rows), 3),
        f"prefect_call_s_{n}": round(statistics.median(x["prefect_call_s"] for x in rows), 3),
        f"busy_503_{n}": sum(int(x["busy_503"]) for x in rows),
        f"planflow_requests_{n}": statistics.median(x["planflow_requests"] for x in rows),
        f"prefect_requests_{n}": statistics.median(x["prefect_requests"] for x in rows),
        f"quiet_wait_s_{n}": round(statistics.median(w for w in waits if w is not None), 2) if any(waits) else None,
        f"quiet_timeouts_{n}": sum(1 for w in waits if w is None) if quiet else None,
    }


def profile(n: int, path: Path) -> None:
    import cProfile
    import pstats

    flow = planflow_flow(n)
    profiler = cProfile.Profile()
    profiler.runcall(flow, local_pool=POOL)
    profiler.dump_stats(str(path))
    pstats.Stats(str(path)).sort_stats("cumulative").print_stats(40)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 400])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite", help="the server's database")
    parser.add_argument("--profile", type=Path, help="also write a cProfile of one planflow run of the first size")
    parser.add_argument(
        "--no-quiet",
        action="store_true",
        help="start each run at once, in the tail of the one before (before 2026-12-05)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or any(n < 1 for n in args.sizes):
        parser.error(f"--rounds {args.rounds} and --sizes {args.sizes} must be >= 1")

    from bench.tempserver import TempServer

    class Server(TempServer):
        def start(self) -> None:  # a loaded machine can take minutes to start a server
            from planflow.ops import server as stack

            stack.up(self.paths, port=self.port, db=self.db, timeout=SERVER_START_SECONDS)

    figures: dict[str, Any] = {}
    os.environ["PREFECT_SERVER_LOG_RETRYABLE_ERRORS"] = "true"  # the server logs each 503's cause
    server = Server("overhead", db=args.db)
    with server:  # before Prefect is imported
        from planflow.prefect.blocks import ResourcePool, ensure_defaults
        from planflow.prefect.limits import sync_limits
        from planflow.runtime.events import subscribe

        ensure_defaults()
        ResourcePool(work_pool="local-process", **CAPACITY).save(POOL, overwrite=True)
        sync_limits({POOL: CAPACITY})
        first = FirstRelease()
        unsubscribe = subscribe(first.reporter)
        try:
            for n in args.sizes:
                figures.update(measure(n, args.rounds, first, server.paths.log_file, quiet=not args.no_quiet))
            if args.profile:
                profile(args.sizes[0], args.profile)
        finally:
            unsubscribe()
    figures["overhead_rounds"] = args.rounds
    figures["overhead_db"] = args.db
    write(figures)
    return figures


def write(figures: dict[str, Any]) -> None:
    """Merge `figures` into overhead.json (other benchmarks add their keys there too) and
    write overhead.md from everything the file then holds."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "overhead.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(figures)
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    sizes = sorted({int(k.rsplit("_", 1)[1]) for k in merged if k.startswith(("ratio_inprocess_", "ratio_dask_"))})
    lines = [
        "# Overhead: a planflow run of N trivial components against a plain Prefect flow of N tasks",
        "",
        "Same process, same server, same thread pool and result persistence, alternating, each run "
        f"started on a quiet server (median wait {merged.get('quiet_wait_s_40', '-')} s at N = 40); medians over "
        f"{merged.get('overhead_rounds', '?')} rounds. Goal: every ratio <= 1.2. Times run from the flow's "
        "call to its run's Completed state; the call itself returns 0-1 s later, at the next whole second "
        "of Prefect's heartbeat thread (the last three columns).",
        "",
        "| N | mode | planflow s | plain Prefect s | ratio | flow run start to first release s "
        "| until the call returned: planflow s | plain s | ratio | server requests per run: planflow | plain |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in ("inprocess", "dask"):
        for n in sizes:
            if merged.get(f"ratio_{mode}_{n}") is None:
                continue
            suffix = "" if mode == "inprocess" else "_dask"
            keys = (
                f"planflow{suffix}_s_{n}",
                f"prefect{suffix}_s_{n}",
                f"ratio_{mode}_{n}",
                f"first_release{suffix}_s_{n}",
                f"planflow{suffix}_call_s_{n}",
                f"prefect{suffix}_call_s_{n}",
                f"ratio_call_{mode}_{n}",
            )
            cells = ["-" if merged.get(k) is None else f"{merged[k]:.2f}" for k in keys]
            if mode == "inprocess":  # the requests per run (the Dask benchmark does not count them)
                counted = (f"planflow_requests_{n}", f"prefect_requests_{n}")
                cells += ["-" if merged.get(k) is None else f"{merged[k]:g}" for k in counted]
            else:
                cells += ["-", "-"]
            lines.append(f"| {n} | {mode} | " + " | ".join(cells) + " |")
    (RESULTS / "overhead.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
