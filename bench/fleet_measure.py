"""What the fleet benchmark measures, as pure functions of what it read back from Prefect.

- capacity violations: the instants (each start of a component) when the declared
  demand of the components running on the pool, over all runs, exceeds its capacity;
- the seconds during which it did, and the highest demand seen;
- a run's ETA as its plan gave it (the plan-figures artifact), and actual / ETA.
"""

from __future__ import annotations

import bisect
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

EPS = 1e-6
ETA_LINE = re.compile(r"\|\s*ETA \((?:planned|expected) finish\)\s*\|\s*(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC\s*\|")
MAKESPAN_LINE = re.compile(r"\|\s*planned makespan\s*\|\s*([0-9.]+) s\s*\|")


@dataclass(frozen=True)
class Interval:
    """One component of one run, running from `start` to `end` (Unix seconds)."""

    run: str
    component: str
    start: float
    end: float
    demand: Mapping[str, float]


def over_capacity(intervals: Iterable[Interval], capacity: Mapping[str, float]) -> dict[str, float]:
    """Sweep the intervals: `violations` (starts at which the running demand exceeds a
    resource's capacity), `seconds_over` (time spent over it) and the peak per resource."""
    items = sorted(intervals, key=lambda i: i.start)
    edges = sorted({t for i in items for t in (i.start, i.end)})
    starts = {i.start for i in items}
    violations, seconds_over = 0, 0.0
    peak = dict.fromkeys(capacity, 0.0)
    for left, right in zip(edges, [*edges[1:], None], strict=True):
        live = [i for i in items if i.start <= left < i.end]
        use = {r: sum(i.demand.get(r, 0.0) for i in live) for r in capacity}
        for r, value in use.items():
            peak[r] = max(peak[r], value)
        over = any(use[r] > capacity[r] + EPS for r in capacity)
        if over and left in starts:
            violations += 1
        if over and right is not None:
            seconds_over += right - left
    return {"violations": violations, "seconds_over": seconds_over, **{f"peak_{r}": v for r, v in peak.items()}}


def trace(intervals: Iterable[Interval], submitted: float, run_starts: Iterable[float], capacity_cpu: float) -> dict:
    """Where a burst's time goes: until the first run started, until the first component
    started, the seconds no component ran between the first start and the last end, and the
    pool's declared cpu in use over that span (1.0 = both cores held all the time)."""
    items = sorted(intervals, key=lambda i: i.start)
    starts = sorted(run_starts)
    if not items:
        return {}
    first, last = items[0].start, max(i.end for i in items)
    idle, reach = 0.0, first
    for i in items:
        idle += max(0.0, i.start - reach)
        reach = max(reach, i.end)
    busy = sum((i.end - i.start) * i.demand.get("cpu", 0.0) for i in items)
    return {
        "first_run_start_s": round(starts[0] - submitted, 2) if starts else None,
        "last_run_start_s": round(starts[-1] - submitted, 2) if starts else None,
        "first_component_s": round(first - submitted, 2),
        "pool_idle_s": round(idle, 2),
        "cpu_in_use_share": round(busy / (capacity_cpu * (last - first)), 3) if last > first else None,
    }


def lower_bound(intervals: Iterable[Interval], capacity: Mapping[str, float]) -> dict[str, float]:
    """The least makespan any policy could reach with these durations: the declared work
    (demand x seconds, per resource) over the pool's capacity; the larger of cpu and memory."""
    items = list(intervals)
    work = {r: sum(i.demand.get(r, 0.0) * (i.end - i.start) for i in items) for r in capacity}
    bounds = {r: work[r] / capacity[r] for r in capacity if capacity[r] > 0}
    return {"cpu_work_s": round(work.get("cpu", 0.0), 2), "lower_bound_s": round(max(bounds.values(), default=0.0), 2)}


def waits(
    intervals: Iterable[Interval],
    upstream: Mapping[str, Mapping[str, tuple[str, ...]]],
    pipeline_of: Mapping[str, str],
    run_starts: Mapping[str, float],
    capacity: Mapping[str, float],
) -> dict[str, float]:
    """Where a policy loses time between components: for each component, the seconds from
    when it was ready (its run's upstream components ended, or its run started) to its
    start (`ready_wait_s`), and the part of that wait during which the pool had room for
    it by every resource beside what ran (`idle_wait_s`: time lost to the dispatcher, not
    to capacity: polling, planning, holding to a plan)."""
    items = sorted(intervals, key=lambda i: i.start)
    ends = {(i.run, i.component): i.end for i in items}
    edges = sorted({t for i in items for t in (i.start, i.end)})
    ready_wait = idle_wait = 0.0
    for i in items:
        ups = upstream.get(pipeline_of.get(i.run, ""), {}).get(i.component, ())
        ready = max([run_starts.get(i.run, i.start)] + [ends.get((i.run, u), 0.0) for u in ups])
        if i.start <= ready:
            continue
        ready_wait += i.start - ready
        points = [ready] + [t for t in edges if ready < t < i.start] + [i.start]
        for left, right in zip(points, points[1:], strict=False):
            live = [o for o in items if o.start <= left < o.end and o is not i]
            room = all(
                sum(o.demand.get(r, 0.0) for o in live) + i.demand.get(r, 0.0) <= capacity[r] + EPS for r in capacity
            )
            if room:
                idle_wait += right - left
    return {"ready_wait_s": round(ready_wait, 2), "idle_wait_s": round(idle_wait, 2)}


def eta_from_plan(markdown: str, created: float) -> float | None:
    """The run's ETA (Unix time) from its plan-figures markdown: the ETA line when the
    plan has one (the pool calendar writes it), else the time the plan was published
    plus its planned makespan; None for a run without a plan."""
    found = ETA_LINE.search(markdown)
    if found:
        return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
    makespan = MAKESPAN_LINE.search(markdown)
    return created + float(makespan.group(1)) if makespan else None


def eta_ratio(submitted: float, finished: float, eta: float) -> float | None:
    """Actual time to finish over the time the ETA promised, both from submission."""
    promised = eta - submitted
    return (finished - submitted) / promised if promised > 0 else None


def held_idle(
    samples: Sequence[tuple[float, float]],
    intervals: Iterable[Interval],
    turn_held: Sequence[tuple[float, float]] | None = None,
) -> dict[str, float]:
    """Cores the shared ledger held beyond what running components declared, summed over
    the samples (each sample stands until the next): slots a run's lease kept while no
    component of it used them (`held_idle_cpu_s`), and the cores held on average. With
    `turn_held` (the pool's turn, sampled: 1 while a step claims it): the part held while
    a claim stood (`held_idle_in_claims_cpu_s`: mostly the cores a wide step took as they
    came free and keeps until it has them all, with the other runs held back), and how long
    the turn was held (`turn_held_s`)."""
    items = list(intervals)
    turns = sorted(turn_held or [])
    turn_times = [when for when, _ in turns]
    held_idle_s = held_s = in_claims_s = turn_s = 0.0
    for (t, held), (t_next, _) in zip(samples, samples[1:], strict=False):
        running = sum(i.demand.get("cpu", 0.0) for i in items if i.start <= t < i.end)
        idle = max(0.0, held - running) * (t_next - t)
        held_idle_s += idle
        held_s += held * (t_next - t)
        last = bisect.bisect_right(turn_times, t) - 1  # the turn's last sample at or before t
        claimed = last >= 0 and turns[last][1] > 0
        if claimed:
            in_claims_s += idle
            turn_s += t_next - t
    span = samples[-1][0] - samples[0][0] if len(samples) > 1 else 0.0
    figures = {
        "held_idle_cpu_s": round(held_idle_s, 2),
        "cpu_held_mean": round(held_s / span, 3) if span > 0 else 0.0,
    }
    if turn_held is not None:
        figures.update(held_idle_in_claims_cpu_s=round(in_claims_s, 2), turn_held_s=round(turn_s, 2))
    return figures


def empty_pool(
    intervals: Iterable[Interval],
    cpu_held: Sequence[tuple[float, float]],
    turn_held: Sequence[tuple[float, float]],
    min_seconds: float = 1.0,
) -> dict[str, float]:
    """The stretches of at least `min_seconds`, between the first component's start and the
    last end, with no component running (`empty_stalls`, `empty_stall_s`), and what the
    shared ledger held meanwhile (its samples, each standing until the next): the cores
    (`empty_cpu_held_mean`: slots held while nothing ran) and the share of that time the
    pool's turn was held (`empty_turn_held_share`: a claim stopping the other runs)."""
    items = sorted(intervals, key=lambda i: i.start)
    if not items:
        return {}
    stalls, reach = [], items[0].end
    for i in items[1:]:
        if i.start - reach >= min_seconds:
            stalls.append((reach, i.start))
        reach = max(reach, i.end)

    def held_during(samples: Sequence[tuple[float, float]]) -> float:
        total = 0.0
        for (t, held), (t_next, _) in zip(samples, samples[1:], strict=False):
            total += held * sum(max(0.0, min(t_next, b) - max(t, a)) for a, b in stalls)
        return total

    seconds = sum(b - a for a, b in stalls)
    return {
        "empty_stalls": len(stalls),
        "empty_stall_s": round(seconds, 2),
        "empty_cpu_held_mean": round(held_during(cpu_held) / seconds, 3) if seconds else 0.0,
        "empty_turn_held_share": round(held_during(turn_held) / seconds, 3) if seconds else 0.0,
    }


def plan_rows_planned(rows: Iterable[Mapping], planned_at: float) -> dict[str, tuple[float, float]]:
    """A run's plan table (the `-plan` artifact's rows, seconds from the plan) as each
    component's planned start and finish (Unix time)."""
    return {str(r["component"]): (planned_at + float(r["start_s"]), planned_at + float(r["finish_s"])) for r in rows}


def lateness(
    planned: Mapping[str, tuple[float, float]],
    actual: Mapping[str, tuple[float, float]],
    upstream: Mapping[str, tuple[str, ...]],
) -> dict[str, float]:
    """Where one run fell behind its plan, in seconds (a run's planned and actual intervals
    per component): `finish_late_s`, its last actual end after its last planned finish;
    `overrun_s`, the components' actual durations beyond their planned ones (estimates
    that ran short), summed; `start_late_s`, the starts after both their planned start and
    their upstream's actual end (waits for the pool: other runs, handovers), summed."""
    overrun = start_late = 0.0
    for name, (p_start, p_end) in planned.items():
        if name not in actual:
            continue
        a_start, a_end = actual[name]
        overrun += max(0.0, (a_end - a_start) - (p_end - p_start))
        ready = max([p_start] + [actual[u][1] for u in upstream.get(name, ()) if u in actual])
        start_late += max(0.0, a_start - ready)
    last_planned = max((f for _, f in planned.values()), default=0.0)
    last_actual = max((e for _, e in actual.values()), default=0.0)
    return {
        "finish_late_s": round(last_actual - last_planned, 2),
        "overrun_s": round(overrun, 2),
        "start_late_s": round(start_late, 2),
    }


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent so far, all cores (user, system, interrupts):
    the difference over a burst is what the server, the worker, the flow runs and their
    components used together (the benchmark runs alone on the machine)."""
    import psutil  # noqa: PLC0415

    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def server_cpu_seconds() -> float | None:
    """CPU seconds the Prefect server's process (the one in the state folder's pid file)
    has spent so far, its children's too; None when it cannot be read. Over a burst it
    splits the orchestration's cost into the server's share and the clients' (the worker,
    the flow runs' engines, planflow's coordination)."""
    import psutil  # noqa: PLC0415

    from planflow.settings import StatePaths  # noqa: PLC0415

    try:
        t = psutil.Process(int(StatePaths.discover().pid_file.read_text().strip())).cpu_times()
    except (OSError, ValueError, psutil.Error):
        return None
    return t.user + t.system + t.children_user + t.children_system


QUIET_CPU_SECONDS = 0.01  # the server used less CPU than this ...
QUIET_WINDOW_SECONDS = 0.25  # ... over this long: it is quiet
SETTLE_SECONDS = 20.0  # the most one wait for quiet lasts (the run goes on then, counted)


def settle(timeout: float = SETTLE_SECONDS) -> float | None:
    """Wait until the Prefect server has gone quiet (less than QUIET_CPU_SECONDS of its
    process's CPU over QUIET_WINDOW_SECONDS): the last run's tail done, the server's
    processing of its task-run events and planflow's writes after its final state. The
    seconds waited; None at the timeout or when the server's CPU cannot be read."""
    started = time.perf_counter()
    last = server_cpu_seconds()
    while last is not None and time.perf_counter() - started < timeout:
        time.sleep(QUIET_WINDOW_SECONDS)
        now = server_cpu_seconds()
        if now is not None and now - last < QUIET_CPU_SECONDS:
            return time.perf_counter() - started
        last = now
    return None


def machine_cpu(used_s: float, seconds: float, work_s: float) -> dict[str, float]:
    """The machine's CPU over a burst: `used_s` in `seconds` of wall time, its share of all
    cores, and what is left after the components' own work (`work_s`: the work alone, as
    the warm-up measured it): the orchestration's cost (Prefect's engine, the server,
    planflow's coordination), which competes with the components for the same cores."""
    cores = os.cpu_count() or 1
    return {
        "machine_cpu_s": round(used_s, 1),
        "machine_busy_share": round(used_s / (cores * seconds), 3) if seconds > 0 else 0.0,
        "orchestration_cpu_s": round(used_s - work_s, 1),
    }
