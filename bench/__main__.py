"""`make bench`: every benchmark, one after another; each writes bench/results/<name>.md|json.

    python -m bench                 # all
    python -m bench planner dispatch   # some
Options of one benchmark: `python -m bench.bench_planner --help` (and bench_dispatch, ...).
"""

from __future__ import annotations

import subprocess
import sys
import time

BENCHMARKS = {
    "planner": "bench.bench_planner",  # PSPLIB j30 and mm-j10, scale 100/300/1000
    "dispatch": "bench.bench_dispatch",  # a real run: plan versus FIFO
    "monitoring": "bench.bench_monitoring",  # alert latency, bridge burst of 10,000 alerts
    "remediation": "bench.bench_remediation",  # alert -> remediation flow run started
    "fleet": "bench.bench_fleet",  # bursts of runs on one shared pool, SQLite and PostgreSQL
    "exact": "bench.bench_exact",  # small plans proven optimal: time to proof, 5/10/15 tasks
    "results": "bench.bench_results",  # stored result bytes and time: planflow serializer vs pickle
    "serving": "bench.bench_serving",  # planflow serve vs plain FastAPI; replica kill and swap under load
    "overhead": "bench.bench_overhead",  # N trivial components against a plain Prefect flow of N tasks
}


def main(names: list[str]) -> int:
    chosen = names or list(BENCHMARKS)
    unknown = [n for n in chosen if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in chosen:
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        # One process each: every benchmark points Prefect at its own server.
        code = subprocess.call([sys.executable, "-m", BENCHMARKS[name]])
        if code:
            print(f"== {name} failed with exit code {code}", file=sys.stderr)
            return code
        print(f"== {name}: {time.perf_counter() - started:.0f} s, see bench/results/{name}.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
