"""What a run shows: the plan, planned versus actual, a Gantt picture of both, the
summary and the totals.

Pure functions from a PipelinePlan and the dispatcher's records to table rows,
markdown and PNG bytes; the reporters (reporters.py) turn them into Prefect artifacts.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from planflow.core.pipeline import Pipeline
from planflow.runtime import gantt
from planflow.runtime.caching import step_state
from planflow.runtime.dispatch import StepRecord
from planflow.runtime.eta_history import Allowance
from planflow.runtime.history import artifact_slug
from planflow.runtime.planning import PipelinePlan


def artifact_key(pipeline: Pipeline, what: str) -> str:
    """The key of one of a pipeline's artifacts: `<slug>-plan`, `<slug>-summary`, ..."""
    return f"{artifact_slug(pipeline.name)}-{what}"


def key_metrics(result: Any) -> dict[str, float]:
    """The headline figures of a step's output, when it offers `key_metrics()`."""
    method = getattr(result, "key_metrics", None)
    if callable(method):
        try:
            return {k: float(v) for k, v in method().items()}
        except (TypeError, ValueError):
            return {}
    return {}


def fmt_metrics(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def usage_figures(pipeline: Pipeline, record: StepRecord) -> dict[str, Any]:
    """A step's declared CPUs and memory beside what it used, where that was measured (a
    step run in a process of its own: runtime/isolation.py; a child flow run: memory.py),
    None when not; and its kills for memory with the limit it last ran at (oom.py)."""
    spec, usage = pipeline.steps[record.step].spec, record.usage
    peak = usage.peak_mem_gib if usage is not None else record.peak_mem_gib
    figures = {
        "declared_cpu": spec.cpu,
        "declared_mem_gib": spec.mem_gib,
        "cpu_seconds": None if usage is None else round(usage.cpu_seconds, 3),
        "peak_mem_gib": None if peak is None else round(float(peak), 4),
    }
    if record.oom_kills:
        figures.update(oom_kills=record.oom_kills, mem_limit_gib=record.mem_limit_gib)
    if record.attempts > 1:
        figures["attempts"] = record.attempts
    return figures


def summary_rows(pipeline: Pipeline, records: Mapping[str, StepRecord], order: list[str]) -> list[dict[str, Any]]:
    """Per component: state, pool, seconds, declared and used resources, and key metric
    (the `<slug>-summary` table). A column that only some steps have (kills for memory,
    attempts) is in every row, "-" where it does not apply: a table's columns are its
    first row's."""
    rows = [
        {
            "component": name,
            "state": step_state(records[name]),
            "pool": records[name].pool,
            "seconds": None if records[name].seconds is None else round(records[name].seconds, 3),
            **usage_figures(pipeline, records[name]),
            "key_metric": fmt_metrics(key_metrics(records[name].result)),
        }
        for name in order
    ]
    columns = list(dict.fromkeys(key for row in rows for key in row if key != "key_metric")) + ["key_metric"]
    return [{key: row.get(key, "-") for key in columns} for row in rows]


def totals_markdown(pipeline: Pipeline, records: Mapping[str, StepRecord]) -> str:
    totals = pipeline.totals()
    lines = [
        f"# {pipeline.name}: resource demand and time",
        "",
        "| figure | value |",
        "|---|---|",
        f"| components | {totals['components']} |",
        f"| CPU core-seconds (estimated) | {totals['cpu_seconds']:.1f} |",
        f"| GPU-seconds (estimated) | {totals['gpu_seconds']:.1f} |",
        f"| memory GiB-seconds (estimated) | {totals['mem_gib_seconds']:.1f} |",
        f"| sum of estimates (s) | {totals['total_seconds']:.1f} |",
        f"| critical path (s) | {totals['critical_path_seconds']:.1f} |",
        f"| wall time of this run (s) | {actual_makespan(records):.2f} |",
    ]
    return "\n".join(lines)


def plan_rows(pp: PipelinePlan) -> list[dict[str, Any]]:
    rows = []
    for t in pp.plan.order_tasks():
        rows.append(
            {
                "component": t.name,
                "pool": t.pool,
                "start_s": round(t.start, 2),
                "finish_s": round(t.finish, 2),
                "duration_s": round(t.duration, 2),
                "cpu": t.demand.get("cpu", 0.0),
                "gpu": t.demand.get("gpu", 0.0),
                "mem_gib": t.demand.get("mem_gib", 0.0),
                "estimate": pp.source_of(t.name),
                "mem_from": pp.memory[t.name].source if t.name in pp.memory else "declared",
            }
        )
    return rows


def plan_figures(pp: PipelinePlan) -> dict[str, Any]:
    plan = pp.plan
    return {
        "makespan_s": plan.makespan,
        "lower_bound_s": plan.lower_bound,
        "gap": plan.gap,
        "status": plan.status,
        "solver": plan.solver,
        "solve_seconds": plan.solve_seconds,
        "heuristic_makespan_s": plan.heuristic_makespan,
        "cost": plan.cost,
        "bounds": dict(plan.bounds),
    }


def planned_vs_actual(pp: PipelinePlan, records: Mapping[str, StepRecord]) -> list[dict[str, Any]]:
    """Per component: start delay (actual - planned start) and overrun (actual / planned)."""
    rows = []
    for t in pp.plan.order_tasks():
        r = records.get(t.name)
        actual = r.seconds if r else None
        rows.append(
            {
                "component": t.name,
                "pool": t.pool,
                "state": r.state if r else "Pending",
                "planned_start_s": round(t.start, 2),
                "actual_start_s": None if not r or r.started is None else round(r.started, 2),
                "start_delay_s": None if not r or r.started is None else round(r.started - t.start, 2),
                "planned_s": round(t.duration, 2),
                "actual_s": None if actual is None else round(actual, 2),
                "overrun": None if actual is None or t.duration <= 0 else round(actual / t.duration, 2),
            }
        )
    return rows


def peak_demand(pp: PipelinePlan) -> dict[str, dict[str, float]]:
    """Per pool and resource, the highest total demand of the plan at any instant (a task
    holds its demand over [start, finish)): one sweep over the starts and finishes in time
    order, a finish before a start at the same instant (comparing every task with every
    other took 25 ms at 400 components, on the run's reporting thread)."""
    peaks: dict[str, dict[str, float]] = {}
    moments: dict[str, list[tuple[float, int, Mapping[str, float]]]] = {}
    for t in pp.plan.tasks.values():
        pool = peaks.setdefault(t.pool, {})
        for resource in t.demand:
            pool.setdefault(resource, 0.0)
        if t.finish > t.start:  # a task of no length holds nothing at any instant
            moments.setdefault(t.pool, []).extend(((t.start, 1, t.demand), (t.finish, 0, t.demand)))
    for pool, events in moments.items():
        held: dict[str, float] = {}
        for _, starts, demand in sorted(events, key=lambda e: (e[0], e[1])):
            for resource, amount in demand.items():
                held[resource] = held.get(resource, 0.0) + (amount if starts else -amount)
                if starts:
                    peaks[pool][resource] = max(peaks[pool][resource], held[resource])
    return peaks


def actual_makespan(records: Mapping[str, StepRecord]) -> float:
    return max((r.finished for r in records.values() if r.finished is not None), default=0.0)


def gantt_png(pp: PipelinePlan, records: Mapping[str, StepRecord] | None = None, title: str = "") -> bytes:
    """A Gantt chart (gantt.py): one row per component, the planned bar (light) and, when
    records are given, the actual bar (dark, red when failed) over it; colour per pool."""
    tasks = pp.plan.order_tasks()
    planned = [gantt.Bar(row, t.name, t.pool, t.start, t.finish) for row, t in enumerate(tasks)]
    actual = [
        gantt.Bar(row, t.name, t.pool, r.started, r.finished, r.state == "Failed")
        for row, t in enumerate(tasks)
        if (r := (records or {}).get(t.name)) is not None and r.started is not None and r.finished is not None
    ]
    subtitle = (
        f"plan {pp.plan.makespan:.1f} s ({pp.plan.status}, gap {pp.plan.gap:.1%}, "
        f"{pp.plan.solver} {pp.plan.solve_seconds:.2f} s)"
    )
    if records:
        subtitle += f" · actual {actual_makespan(records):.1f} s"
    return gantt.draw(
        planned,
        actual,
        [t.name for t in tasks],
        pp.plan.makespan,
        actual_makespan(records) if records else None,
        f"{title}\n{subtitle}" if title else subtitle,
    )


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown that embeds the picture itself, so the Prefect UI shows it with no file server."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def plan_markdown(
    pp: PipelinePlan,
    name: str,
    png: bytes | None = None,
    planned_at: float | None = None,
    allowed: Allowance | None = None,
) -> str:
    """The plan's figures (and Gantt picture) as markdown; with `planned_at`, its planned
    finish and the run's ETA (the planned makespan x the `allowed` factor, eta_history.py)."""
    f = plan_figures(pp)
    bounds = ", ".join(f"{k} {v:.2f} s" for k, v in f["bounds"].items())
    lines = [
        f"# Plan for {name}",
        "",
        "| figure | value |",
        "|---|---|",
        f"| planned makespan | {f['makespan_s']:.2f} s |",
        f"| lower bound | {f['lower_bound_s']:.2f} s ({bounds}) |",
        f"| gap | {f['gap']:.1%} |",
        f"| status | {f['status']} |",
        f"| solver, solve time | {f['solver']}, {f['solve_seconds']:.3f} s |",
        f"| list-scheduling makespan | {f['heuristic_makespan_s']:.2f} s |",
    ]
    if planned_at:
        finish = datetime.fromtimestamp(planned_at + pp.plan.makespan, tz=UTC)
        eta = datetime.fromtimestamp(planned_at + pp.plan.makespan * (allowed or Allowance()).factor, tz=UTC)
        lines.append(f"| planned finish | {finish:%Y-%m-%d %H:%M:%S} UTC |")
        lines.append(f"| ETA (expected finish) | {eta:%Y-%m-%d %H:%M:%S} UTC |")
        if allowed is not None:
            lines.append(f"| ETA from | {allowed.says()} |")
    for note in pp.plan.notes:
        lines.append(f"\n> {note}")
    if png:
        lines += ["", png_markdown(png, f"Gantt chart of the plan for {name}")]
    return "\n".join(lines)


def start_text(delay_s: float | None) -> str:
    """A start delay in words: "started 2.5 s late", "started 31.0 s early" (the steps
    before it finished sooner than their estimates), "on time" within 0.05 s."""
    if delay_s is None:
        return "not started"
    if abs(delay_s) < 0.05:
        return "on time"
    return f"started {abs(delay_s):.1f} s {'late' if delay_s > 0 else 'early'}"


def ratio_text(ratio: float | None) -> str:
    """actual/planned duration as a factor: "1.32×" (ran 32 % longer than planned)."""
    return "-" if ratio is None else f"{ratio:.2f}×"


def seconds_text(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


PLANNED_VS_ACTUAL_LEGEND = (
    "*start*: when the component started against its planned start; it starts early when the "
    "components before it finish sooner than their estimates, late when they overran or its pool "
    "was busy. *actual/planned*: its duration over its planned duration (1.00× as planned, "
    "2.00× twice as long; the PlanflowComponentOverrun alert fires above `overrun_factor` in thresholds.yml)."
)


def actual_markdown(pp: PipelinePlan, records: Mapping[str, StepRecord], name: str, png: bytes | None = None) -> str:
    achieved = actual_makespan(records)
    planned = pp.plan.makespan
    ratio = achieved / planned if planned > 0 else None
    lines = [
        f"# {name}: planned versus actual",
        "",
        f"Makespan achieved **{achieved:.2f} s** against **{planned:.2f} s** planned "
        f"(actual/planned {ratio_text(ratio)}).",
        "",
        "| component | pool | state | start | planned (s) | actual (s) | actual/planned |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in planned_vs_actual(pp, records):
        lines.append(
            f"| {row['component']} | {row['pool']} | {row['state']} | {start_text(row['start_delay_s'])} | "
            f"{seconds_text(row['planned_s'])} | {seconds_text(row['actual_s'])} | {ratio_text(row['overrun'])} |"
        )
    lines += ["", PLANNED_VS_ACTUAL_LEGEND]
    if png:
        lines += ["", png_markdown(png, f"Gantt chart, planned and actual, for {name}")]
    return "\n".join(lines)
