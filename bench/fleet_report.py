"""The fleet benchmark's summary (one object per policy) and its markdown."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench import percentile

RESULTS = Path(__file__).resolve().parent / "results"
POLICIES = {  # what each policy's runs are given: the flow's policy, PLANFLOW_SHARED_SLOTS
    "planflow": {"policy": "plan", "shared": "true"},
    "default": {"policy": "fifo", "shared": "false"},
}


def summarise(bursts: list[dict], databases: list[str]) -> dict:
    """One object per policy: violations, makespan (median over bursts) and its ratio to
    the default's, ETA ratios p50/p95, run-creation p95 per database."""
    result: dict = {}
    for policy in POLICIES:
        mine = [b for b in bursts if b["policy"] == policy]
        if not mine:  # a partial result, written after each burst
            continue
        ratios = [r for b in mine for r in b["eta_ratios"]]
        result[policy] = {
            "capacity_violations": sum(b["capacity_violations"] for b in mine),
            "seconds_over_capacity": round(sum(b["seconds_over_capacity"] for b in mine), 2),
            "ledger_over_limit_samples": sum(b["ledger_over_limit_samples"] for b in mine),
            "makespan_s": round(statistics.median(b["makespan_s"] for b in mine), 2),
            "eta_ratio_p50": round(percentile(ratios, 0.5), 3) if ratios else None,
            "eta_ratio_p95": round(percentile(ratios, 0.95), 3) if ratios else None,
            "runs_with_eta": len(ratios),
            "run_create_p95_s": {
                db: round(percentile(created, 0.95), 3) if created else None
                for db in databases
                for created in [[s for b in mine if b["db"] == db for s in b["create_s"]]]
            },
            "run_create_503_answers": {
                db: sum(b.get("create_503_answers", 0) for b in mine if b["db"] == db) for db in databases
            },
            "runs_not_created": {
                db: sum(b.get("runs_not_created", 0) for b in mine if b["db"] == db) for db in databases
            },
            "failed_runs": [f for b in mine for f in b["failed_runs"]],
            # the machine's CPU beyond the components' own work (fleet_measure.machine_cpu)
            "orchestration_cpu_s": _median_of(mine, "orchestration_cpu_s"),
            "server_cpu_s": _median_of(mine, "server_cpu_s"),
            # the server's requests over the burst and its tail (server_requests.py)
            "server_requests": _median_of(mine, "server_requests"),
            "machine_busy_share": _median_of(mine, "machine_busy_share"),
        }
    default = result.get("default", {}).get("makespan_s")
    for figures in result.values():
        figures["makespan_ratio_to_default"] = round(figures["makespan_s"] / default, 3) if default else None
    return result


def _median_of(bursts: list[dict], key: str) -> float | None:
    """The median of a trace figure over the bursts that have it (None when none does)."""
    values = [b["trace"][key] for b in bursts if key in b.get("trace", {})]
    return round(statistics.median(values), 3) if values else None


def write(figures: dict, results: Path = RESULTS) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "fleet.json").write_text(json.dumps(figures, indent=2))
    meta = figures["meta"]
    lines = [
        "# Fleet benchmark: many runs at once on one pool, planflow versus Prefect's default",
        "",
        f"{meta['runs_per_burst']} runs per burst ({', '.join(meta['pipelines'])}, mixed), submitted together "
        f"through deployments to one process worker; pool `{meta['pool']['name']}` (cpu {meta['pool']['cpu']:g}, "
        f"mem {meta['pool']['mem_gib']:g} GiB); {meta['rounds']} burst(s) per policy and database, alternating; "
        f"databases: {', '.join(meta['databases'])}; {meta['cpus']} CPUs, load average "
        f"{meta['load_start']:.1f} at the start and {meta['load_end']:.1f} at the end"
        + (f"; {meta['cgroup']}" if meta.get("cgroup") else "")
        + (
            "; planflow runs held to the calendar (PLANFLOW_HOLD_TO_CALENDAR=true)"
            if meta.get("hold_to_calendar")
            else ""
        )
        + ("." if meta["complete"] else "; **partial**: written after each burst, the run did not finish."),
        "",
        "| policy | capacity violations | s over capacity | ledger over limit (samples) | makespan s "
        "| / default | ETA ratio p50 | ETA ratio p95 | "
        + " | ".join(f"run create p95 s ({db})" for db in meta["databases"])
        + " |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(meta["databases"]),
    ]
    for policy in [p for p in POLICIES if p in figures]:
        f = figures[policy]
        creates = " | ".join(_fmt(f["run_create_p95_s"][db], 3) for db in meta["databases"])
        lines.append(
            f"| {policy} | {f['capacity_violations']} | {f['seconds_over_capacity']:.1f} | "
            f"{f['ledger_over_limit_samples']} | {f['makespan_s']:.1f} | {_fmt(f['makespan_ratio_to_default'])} | "
            f"{_fmt(f['eta_ratio_p50'])} | {_fmt(f['eta_ratio_p95'])} | {creates} |"
        )
    lines += [
        "",
        "Goals (issue 12): planflow 0 violations; makespan at most the default's; ETA ratio within 15 % at p50 "
        "and 35 % at p95. The default (fifo, no shared ledger) gives no ETA.",
        "",
        "Makespans count from the burst's submission; the first run starts 17-28 s after it (the process "
        "worker starting each flow run's process), which varies between bursts of the same code by up to "
        "10 s: the components' span (first component's start to last end) shows the policy alone.",
        "",
        "| db | round | policy | violations | makespan s | first run, first component started s "
        "| components' span s | lower bound s (burst / alone) | cpu in use "
        "| waits once ready s (with room) | cores held, mean (idle core-s; of them while a claim held the turn) "
        "| peak cpu | peak mem GiB "
        "| pool empty >= 1 s: times, s (cores held, turn held share) "
        "| runs with ETA | failed | run create p95 s | 503 answers |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in figures["bursts"]:
        t = b.get("trace", {})
        span = b["makespan_s"] - t["first_component_s"] if "first_component_s" in t else None
        lines.append(
            f"| {b['db']} | {b['round']} | {b['policy']} | {b['capacity_violations']} | {b['makespan_s']:.1f} | "
            f"{_fmt(t.get('first_run_start_s'), 1)}, {_fmt(t.get('first_component_s'), 1)} | "
            f"{_fmt(span, 1)} | "
            f"{_fmt(t.get('lower_bound_s'), 1)} / {_fmt(t.get('solo_lower_bound_s'), 1)} | "
            f"{_fmt(t.get('cpu_in_use_share_of_makespan'))} | "
            f"{_fmt(t.get('ready_wait_s'), 1)} ({_fmt(t.get('idle_wait_s'), 1)}) | "
            f"{_fmt(t.get('cpu_held_mean'))} ({_fmt(t.get('held_idle_cpu_s'), 1)}; "
            f"{_fmt(t.get('held_idle_in_claims_cpu_s'), 1)}) | "
            f"{b['peak_cpu']:g} | {b['peak_mem_gib']:g} | "
            f"{_fmt(t.get('empty_stalls'), 0)}, {_fmt(t.get('empty_stall_s'), 1)} "
            f"({_fmt(t.get('empty_cpu_held_mean'))}, {_fmt(t.get('empty_turn_held_share'))}) | "
            f"{len(b['eta_ratios'])} | {len(b['failed_runs'])} | "
            f"{percentile(b['create_s'], 0.95):.3f} | {b.get('create_503_answers', 0)} |"
        )
    lines += request_lines(figures["bursts"])
    lines += behind_plan_lines(figures["bursts"])
    (results / "fleet.md").write_text("\n".join(lines) + "\n")


def request_lines(bursts: list[dict]) -> list[str]:
    """Per burst, the Prefect server's requests (its access log, from the burst's submission
    until the server was quiet after it), the most frequent routes named."""
    rows = [
        f"| {b['db']} | {b['round']} | {b['policy']} | {b['trace']['server_requests']} | "
        f"{b.get('ledger_samples', '-')} | "
        + "; ".join(f"{route} {n}" for route, n in b.get("server_requests_by_route", {}).items())
        + " |"
        for b in bursts
        if "server_requests" in b.get("trace", {})
    ]
    if not rows:
        return []
    return [
        "",
        "The Prefect server's requests per burst (its access log, from the submission until the server was "
        "quiet after the burst: the writes after the runs' final states included), by route and answer; each "
        "costs the server 4-25 ms of CPU on the cores the components run on. They include the benchmark's "
        "own reads of the limits (its ledger sampler, one `POST /api/v2/concurrency_limits/filter` every "
        "0.5 s while the burst runs): the runs' own requests are the difference. Every route's count is in "
        "fleet.json (`server_requests_all_routes`).",
        "",
        "| db | round | policy | requests | of them the benchmark's limit reads | most frequent |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def behind_plan_lines(bursts: list[dict]) -> list[str]:
    """Per planflow run, in the order the runs were planned: actual/ETA and where it fell
    behind its plan (fleet_measure.lateness)."""
    rows = [
        f"| {b['db']} | {b['round']} | {k + 1} | {behind.get('pipeline', '-')} | {eta[1]:.2f} | {eta[2]:.1f} | "
        f"{_fmt(behind.get('finish_late_s'), 1)} | {_fmt(behind.get('overrun_s'), 1)} | "
        f"{_fmt(behind.get('start_late_s'), 1)} |"
        for b in bursts
        if b["policy"] == "planflow"
        for k, (eta, behind) in enumerate(zip(b.get("eta_by_plan_order", []), b.get("behind_plan", []), strict=False))
    ]
    if not rows:
        return []
    return [
        "",
        "Where the planflow runs fell behind their first plan, in the order they were planned: the last end "
        "after the planned one, the components' durations beyond their estimates (summed), and their starts after "
        "both the planned start and their inputs (summed: waits for the pool).",
        "",
        "| db | round | planned | pipeline | actual / ETA | ETA s from submission | finish late s | overrun s "
        "| start late s |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
