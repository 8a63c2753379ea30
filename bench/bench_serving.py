"""planflow serve versus a plain FastAPI endpoint, and faults under load.

    python -m bench.bench_serving [--seconds 10] [--rounds 3]

On a throwaway Prefect server: one training run of fraud-risk, then
1. one replica each, side by side: `planflow serve` (python -m planflow.serving) and
   bench/serving_baseline.py (the same three functions, the same model), loaded in
   alternating rounds by wrk (4 connections, one record per request, loopback);
   `throughput_ratio` = planflow req/s / baseline req/s, `p99_ratio` = planflow p99 /
   baseline p99 (medians over the rounds; goal: throughput >= 0.9, p99 <= 1.1);
2. `planflow serve --replicas 2` behind HAProxy under a bounded load (asyncio + httpx):
   `failed_during_kill` while a replica is SIGKILLed (`--kills` times, each replica in
   turn, once both serve again; `kills_losing_a_request` counts the kills that cost a
   request), `failed_during_swap` while a newer run is trained and swapped in (goal: 0 each).
Writes bench/results/serving.json and serving.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SMALL = {"n_customers": 500, "n_merchants": 200, "n_days": 30}

from planflow.ops.processes import free_block  # noqa: E402  (imports no Prefect)

from bench.tempserver import TempServer  # noqa: E402  (imports no Prefect)

SERVER = TempServer("serving")

import psutil  # noqa: E402

from planflow.core import discovery  # noqa: E402
from planflow.ops.processes import log_tail, spawn, stop_process, wait_until  # noqa: E402
from planflow.serving.loadgen import BackgroundLoad  # noqa: E402
from planflow.serving.probes import answers, ready, served_run  # noqa: E402


def train(seed: int = 7) -> str:
    discovery.use_project_imports(ROOT)
    from flows.fraud_risk.flow import fraud_risk  # noqa: PLC0415

    state = fraud_risk(**SMALL, seed=seed, return_state=True)
    if not state.is_completed():
        raise SystemExit(f"the training run did not complete: {state}")
    return str(state.state_details.flow_run_id)


def record() -> dict:
    from flows.fraud_risk import steps  # noqa: PLC0415

    features = steps.features(steps.transactions(n_customers=50, n_merchants=30, n_days=10))
    row = features.select("txn_id", *steps.FEATURE_COLUMNS).row(-1, named=True)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def start(command: list[str], url: str, log: Path, timeout: float = 120) -> subprocess.Popen:
    process = spawn(command, log, os.environ, ROOT)

    if not wait_until(lambda: answers(url) or process.poll() is not None, timeout) or process.poll() is not None:
        stop_process(process)
        raise SystemExit(f"{command} did not become ready:\n{log_tail(log)}")
    return process


def _seconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def wrk(url: str, body: dict, seconds: int, work: Path) -> dict:
    script = work / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
    )
    out = subprocess.run(
        ["wrk", "-t1", "-c4", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    p99 = _seconds(re.search(r"^\s+99%\s+(\S+)", out, re.M)[1])
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:  # a refusal is fast: measuring it would flatter the endpoint
        raise SystemExit(f"{url} answered {errors[1]} requests with an error; wrk said:\n{out}")
    return {"rps": rps, "p99_s": p99}


def side_by_side(body: dict, seconds: int, rounds: int, work: Path) -> dict:
    port = free_block(2)
    planflow = start(
        [sys.executable, "-m", "planflow.serving", "fraud-risk", "--port", str(port)],
        f"http://127.0.0.1:{port}/readyz",
        work / "planflow.log",
    )
    baseline = start(
        [sys.executable, "-m", "bench.serving_baseline", "--port", str(port + 1)],
        f"http://127.0.0.1:{port + 1}/docs",
        work / "baseline.log",
    )
    runs: dict[str, list[dict]] = {"planflow": [], "baseline": []}
    try:
        for _ in range(rounds):  # alternating, so that both see the same machine
            runs["planflow"].append(wrk(f"http://127.0.0.1:{port}/predict", body, seconds, work))
            runs["baseline"].append(wrk(f"http://127.0.0.1:{port + 1}/predict", body, seconds, work))
    finally:
        stop_process(planflow)
        stop_process(baseline)
    median = {k: {m: statistics.median(r[m] for r in v) for m in ("rps", "p99_s")} for k, v in runs.items()}
    return {
        "rounds": runs,
        "median": median,
        "throughput_ratio": median["planflow"]["rps"] / median["baseline"]["rps"],
        "p99_ratio": median["planflow"]["p99_s"] / median["baseline"]["p99_s"],
    }


def _pid_on(port: int) -> int:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return conn.pid
    raise SystemExit(f"no replica listens on {port}")


def _replica(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _answers(load: BackgroundLoad, more: int, when: str, timeout: float = 60) -> None:
    """Wait until the load has `more` answers more, or fail naming `when`."""
    at = load.result.ok
    if not wait_until(lambda: load.result.ok >= at + more, timeout):
        got = load.result
        raise RuntimeError(
            f"{when}: fewer than {more} answers within {timeout:.0f} s "
            f"(ok {got.ok}, failed {got.failed}: {dict(got.reasons)})"
        )


def faults(body: dict, work: Path, kills: int) -> dict:
    port = free_block(3)
    command = [sys.executable, "-m", "planflow.cli", "serve", "fraud-risk", "--replicas", "2"]
    service = start(
        command + ["--port", str(port), "--poll-seconds", "0.5"],
        f"http://127.0.0.1:{port}/readyz",
        work / "replicas.log",
    )
    url = f"http://127.0.0.1:{port}/predict"
    out = {}
    load = None
    try:
        load = BackgroundLoad(url, [body], total=10**9, concurrency=4).start()
        per_kill = []
        for k in range(kills):  # each replica in turn, once both are up again
            victim = port + 1 + k % 2
            if not wait_until(lambda: ready(_replica(port + 1)) and ready(_replica(port + 2)), 60):
                tail = log_tail(work / "replicas.log")
                raise RuntimeError(f"kill {k + 1}: the replicas were not both ready within 60 s:\n{tail}")
            _answers(load, 200, f"kill {k + 1}, before")
            failed_before = load.result.failed
            os.kill(_pid_on(victim), signal.SIGKILL)
            _answers(load, 300, f"kill {k + 1}, after")
            per_kill.append({"failed": load.result.failed - failed_before})
        result = load.finish()
        out["kill"] = {
            "kills": kills,
            "kills_losing_a_request": sum(1 for k in per_kill if k["failed"]),
            "ok": result.ok,
            "failed": result.failed,
            "reasons": dict(result.reasons),
            "per_kill": per_kill,
        }
        wait_until(lambda: ready(_replica(port + 1)) and ready(_replica(port + 2)), 60)

        load = BackgroundLoad(url, [body], total=50_000, concurrency=4).start()
        wait_until(lambda: load.result.ok >= 200, 60)
        newer = train(seed=11)
        swapped = wait_until(lambda: served_run(_replica(port + 1)) == newer == served_run(_replica(port + 2)), 120)
        at = load.result.ok
        wait_until(lambda: load.result.ok >= at + 500, 60)
        result = load.finish()
        out["swap"] = {
            "ok": result.ok,
            "failed": result.failed,
            "reasons": dict(result.reasons),
            "swapped": swapped,
            "runs_answering": len(result.runs),
        }
    finally:
        if load is not None:
            load.stop.set()  # a load left running by a failed wait stops too
        stop_process(service)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk's duration per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=20, help="replicas SIGKILLed under load, one after another")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed. Fix: make services (or apt-get install -y wrk)")
    work = Path(tempfile.mkdtemp(prefix="planflow-bench-serving-"))
    with SERVER:
        train()
        body = record()
        compared = side_by_side(body, args.seconds, args.rounds, work)
        fault = faults(body, work, args.kills)
    result = {
        "throughput_ratio": round(compared["throughput_ratio"], 3),
        "p99_ratio": round(compared["p99_ratio"], 3),
        "failed_during_kill": fault["kill"]["failed"],
        "failed_during_swap": fault["swap"]["failed"],
        "side_by_side": compared,
        "faults": fault,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(result, indent=2))
    m = compared["median"]
    lines = [
        "# planflow serve: fraud-risk /predict",
        "",
        f"wrk, 4 connections, {args.seconds} s x {args.rounds} alternating rounds, one record per request, "
        f"loopback, {os.cpu_count()} cores (load average at the end {os.getloadavg()[0]:.1f}).",
        "",
        "| | req/s (median) | p99 (median) |",
        "|---|---|---|",
        f"| planflow serve (1 replica) | {m['planflow']['rps']:.0f} | {1000 * m['planflow']['p99_s']:.1f} ms |",
        f"| plain FastAPI, same functions and model | {m['baseline']['rps']:.0f} | "
        f"{1000 * m['baseline']['p99_s']:.1f} ms |",
        "",
        f"- throughput_ratio **{result['throughput_ratio']}** (goal >= 0.9), p99_ratio **{result['p99_ratio']}** "
        "(goal <= 1.1)",
        f"- two replicas behind HAProxy: failed_during_kill **{result['failed_during_kill']}** of "
        f"{fault['kill']['ok'] + fault['kill']['failed']} over {fault['kill']['kills']} kills "
        f"({fault['kill']['kills_losing_a_request']} of them lost a request), "
        f"failed_during_swap **{result['failed_during_swap']}** of "
        f"{fault['swap']['ok'] + fault['swap']['failed']} (goal 0)",
    ]
    (RESULTS / "serving.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
