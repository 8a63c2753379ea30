"""Monitoring benchmarks, on real services (fast profile):

1. latency: a pushed metric crosses an alert threshold -> the `planflow.alert.firing`
   event is readable from the Prefect server (several trials; p50/p95);
2. bridge throughput and loss: a burst of 10,000 alerts (plus re-sent duplicates)
   posted to the bridge; events delivered vs sent, duplicates.

Run: ``python -m bench.bench_monitoring [--trials 7 --alerts 10000]``. Starts its own
Prefect server and monitoring stack in a temporary state folder, stops them after.
Writes bench/results/monitoring.md and monitoring.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


from planflow.ops.server import free_port  # noqa: E402

from bench import percentile  # noqa: E402
from bench.tempserver import TempServer  # noqa: E402  (imports no Prefect)

# Point Prefect at a server of our own before anything imports it.
SERVER = TempServer("monitoring")

import httpx  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from planflow.monitoring.metrics import RunRecorder  # noqa: E402
from planflow.ops import services  # noqa: E402

API = os.environ["PREFECT_API_URL"]


def events_filter(resource: str, name: str) -> dict:
    return {
        "occurred": {
            "since": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
            "until": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        },
        "event": {"name": [name]},
        "any_resource": {"id": [resource]},
    }


def first_event(http: httpx.Client, resource: str, name: str) -> dict | None:
    page = http.post(f"{API}/events/filter", json={"filter": events_filter(resource, name), "limit": 5})
    page.raise_for_status()
    events = page.json()["events"]
    return events[0] if events else None


def latency_trials(pushgateway: str, prometheus: str, trials: int) -> list[dict]:
    out = []
    with httpx.Client(timeout=10) as http:
        for i in range(trials):
            pipeline = f"bench-latency-{i}-{uuid.uuid4().hex[:6]}"
            rec = RunRecorder(pipeline, pushgateway_url=pushgateway, registry=CollectorRegistry())
            rec.plan(
                makespan_seconds=3600,
                lower_bound_seconds=3000,
                gap=0.1,
                solve_seconds=0.1,
                status="optimal",
                solver="highs",
            )
            rec.push()
            query = f'planflow_pipeline_running{{pipeline="{pipeline}"}}'
            deadline = time.monotonic() + 30
            while not http.get(f"{prometheus}/api/v1/query", params={"query": query}).json()["data"]["result"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("Prometheus never scraped the pushed metric")
                time.sleep(0.2)
            time.sleep(1.5)  # a clean "below threshold" history before the crossing
            rec.component(
                "step", "local", "running", None, planned_seconds=60, start_delay_seconds=3000
            )  # slip 3000 s of 3600: ratio 0.83 > 0.5
            crossed = time.time()
            rec.push()
            resource = f"planflow.pipeline.{pipeline}"
            event = None
            deadline = time.monotonic() + 60
            while event is None and time.monotonic() < deadline:
                event = first_event(http, resource, "planflow.alert.firing")
                if event is None:
                    time.sleep(0.1)
            readable = time.time()
            if event is None:
                out.append({"pipeline": pipeline, "delivered": False})
                continue
            received = datetime.fromisoformat(event["received"].replace("Z", "+00:00")).timestamp()
            out.append(
                {
                    "pipeline": pipeline,
                    "delivered": True,
                    "to_prefect_received_s": round(received - crossed, 3),
                    "to_readable_s": round(readable - crossed, 3),
                }
            )
            print(f"trial {i}: {out[-1]}", flush=True)
            rec.run_finished("completed", 10, 3600)
            rec.push()
    return out


def burst(bridge: str, token: str, alerts: int, duplicates: int, batch: int) -> dict:
    pipeline = f"bench-burst-{uuid.uuid4().hex[:6]}"
    start = datetime.now(UTC) - timedelta(minutes=1)

    def alert(i: int) -> dict:
        return {
            "status": "firing",
            "labels": {"alertname": "PlanflowBench", "pipeline": pipeline, "n": str(i)},
            "annotations": {"summary": "bench"},
            "startsAt": start.isoformat(),
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": f"{pipeline}-{i:06d}",
        }

    payloads = [[alert(i) for i in range(j, min(alerts, j + batch))] for j in range(0, alerts, batch)]
    payloads += [[alert(i) for i in range(j, min(duplicates, j + batch))] for j in range(0, duplicates, batch)]
    headers = {"Authorization": f"Bearer {token}"}
    codes: dict[int, int] = {}

    def send(chunk: list[dict]) -> int:
        with httpx.Client(timeout=60) as http:
            for attempt in range(5):  # as Alertmanager would: retry a 5xx
                code = http.post(
                    f"{bridge}/alerts", json={"version": "4", "alerts": chunk}, headers=headers
                ).status_code
                if code < 500:
                    return code
                time.sleep(0.5 * (attempt + 1))
            return code

    began = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        for code in pool.map(send, payloads):
            codes[code] = codes.get(code, 0) + 1
    accepted_s = time.perf_counter() - began
    with httpx.Client(timeout=10) as http:
        deadline = time.monotonic() + 300
        while http.get(f"{bridge}/health").json()["spool_depth"] > 0:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        drained_s = time.perf_counter() - began
        resource = f"planflow.pipeline.{pipeline}"
        stored, stable_since, last = 0, time.monotonic(), -1
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            counts = http.post(
                f"{API}/events/count-by/event", json={"filter": events_filter(resource, "planflow.alert.firing")}
            ).json()
            stored = sum(c["count"] for c in counts)
            if stored != last:
                last, stable_since = stored, time.monotonic()
            if stored >= alerts and time.monotonic() - stable_since > 3:
                break
            time.sleep(1)
        persisted_s = time.perf_counter() - began
        metrics = http.get(f"{bridge}/metrics").text
    duplicate_answers = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("planflow_bridge_alerts_duplicate_total")
    )
    return {
        "alerts_sent": alerts,
        "duplicates_resent": duplicates,
        "batch": batch,
        "http_codes": codes,
        "accept_seconds": round(accepted_s, 2),
        "accept_alerts_per_s": round((alerts + duplicates) / accepted_s, 1),
        "spool_drained_seconds": round(drained_s, 2),
        "forward_events_per_s": round(alerts / drained_s, 1),
        "events_in_prefect": stored,
        "lost": max(0, alerts - stored),
        "duplicate_events": max(0, stored - alerts),
        "duplicates_dropped_by_bridge": int(duplicate_answers),
        "all_persisted_seconds": round(persisted_s, 2),
    }


def write(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "monitoring.json").write_text(json.dumps(results, indent=2))
    lat = results["latency"]
    ok = [t for t in lat["trials"] if t["delivered"]]
    b = results["burst"]
    lines = [
        "# Monitoring benchmarks",
        "",
        f"Machine: {os.cpu_count()} cores; {results['when']}; fast profile (scrape/eval 1 s, "
        "`for: 2s`, group_wait 1 s). Real Prometheus 2.42, Alertmanager 0.25, Pushgateway, "
        "planflow bridge and a Prefect 3.8.8 server on SQLite.",
        "",
        "## Threshold crossing -> Prefect event",
        "",
        "A RunRecorder push makes `PlanflowPipelinePlanSlip` true; we time until the "
        "`planflow.alert.firing` event is received by Prefect and until it is readable "
        "from `POST /api/events/filter`.",
        "",
        "| trials | delivered | received p50 | received p95 | readable p50 | readable p95 | max |",
        "|---|---|---|---|---|---|---|",
        f"| {len(lat['trials'])} | {len(ok)} | {lat['received_p50_s']} s | {lat['received_p95_s']} s "
        f"| {lat['readable_p50_s']} s | {lat['readable_p95_s']} s | {lat['readable_max_s']} s |",
        "",
        "## Bridge burst: throughput and loss",
        "",
        f"{b['alerts_sent']} distinct alerts in payloads of {b['batch']} from 8 concurrent "
        f"senders, then {b['duplicates_resent']} of them sent again.",
        "",
        "| accepted (2xx) in | accept rate | spool drained in | forward rate | events in Prefect | lost "
        "| duplicate events | duplicates dropped by bridge |",
        "|---|---|---|---|---|---|---|---|",
        f"| {b['accept_seconds']} s | {b['accept_alerts_per_s']} alerts/s | "
        f"{b['spool_drained_seconds']} s | {b['forward_events_per_s']} events/s | "
        f"{b['events_in_prefect']} | {b['lost']} | {b['duplicate_events']} | "
        f"{b['duplicates_dropped_by_bridge']} |",
        "",
        f"HTTP answers: {b['http_codes']}.",
        "",
    ]
    (RESULTS / "monitoring.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--duplicates", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args(argv)
    paths = SERVER.paths
    ports = {name: free_port() for name in services.ORDER}
    try:
        SERVER.start()
        started = services.up(paths, profile="fast", ports=ports)
        token = (services.monitoring_dir(paths) / "bridge.token").read_text().strip()
        prometheus = started["prometheus"].url
        with httpx.Client() as http:  # wait for the first scrapes
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(
                t["health"] == "up" for t in http.get(f"{prometheus}/api/v1/targets").json()["data"]["activeTargets"]
            ):
                time.sleep(0.5)
        trials = latency_trials(started["pushgateway"].url, prometheus, args.trials)
        ok = [t for t in trials if t["delivered"]]
        rec = [t["to_prefect_received_s"] for t in ok] or [float("nan")]
        read = [t["to_readable_s"] for t in ok] or [float("nan")]
        latency = {
            "trials": trials,
            "received_p50_s": round(statistics.median(rec), 2),
            "received_p95_s": round(percentile(rec, 0.95), 2),
            "readable_p50_s": round(statistics.median(read), 2),
            "readable_p95_s": round(percentile(read, 0.95), 2),
            "readable_max_s": round(max(read), 2),
        }
        print(json.dumps(latency, indent=1), flush=True)
        result = burst(started["bridge"].url, token, args.alerts, args.duplicates, args.batch)
        print(json.dumps(result, indent=1), flush=True)
        write({"when": datetime.now(UTC).isoformat(timespec="seconds"), "latency": latency, "burst": result})
    finally:
        services.down(paths)
        SERVER.stop()


if __name__ == "__main__":
    main()
