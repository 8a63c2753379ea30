"""`planflow calendar [POOL]`: what every run holds and has planned on the pools.

Like `squeue --start` or `bjobs -plan`: the running and planned components of all runs
on each pool (from the pool calendar), a Gantt picture in the terminal (and, with
`--png`, as an image), the slots held now against the pool's capacity, and for each
waiting run (nothing of it started yet) its expected start and finish, and for each run
under way its expected finish (`bjobs -plan`'s estimated finish).

    $ planflow calendar local
    pool local: cpu=2 gpu=0 mem_gib=8  held now: cpu=1 gpu=0 mem_gib=1
    ...
"""

from __future__ import annotations

import importlib
import io
import time
from collections.abc import Mapping
from pathlib import Path

import typer

from planflow.cli.common import check_writable, ensure_server, fail, say, write_file
from planflow.prefect.blocks import load_pools
from planflow.prefect.calendar_store import CalendarEntry
from planflow.prefect.limits import RESOURCES, SLOTS_PER_UNIT, active_slots, limit_name
from planflow.runtime.calendar import OVERRUN_SECONDS, Reservation, read_calendar, reservations, utc

WIDTH = 60  # columns of the terminal Gantt picture
MARKS = {"running": "#", "planned": "-", "done": "."}


def _amounts(vector: Mapping[str, float]) -> str:
    return " ".join(f"{r}={vector.get(r, 0.0):g}" for r in RESOURCES)


def _when(t: float, now: float) -> str:
    delta = t - now
    return f"{utc(t)} ({'in ' if delta >= 0 else ''}{abs(delta):.0f} s{' ago' if delta < 0 else ''})"


def expected_places(
    items: list[Reservation], capacity: Mapping[str, float], now: float
) -> list[tuple[Reservation, float, float]]:
    """(reservation, start, finish) of each component still to come, as the pool can hold
    them: a running one from its start to its planned finish (one past it: to
    OVERRUN_SECONDS from now); a planned one at its planned start, or, where that has
    passed or the pool is full then (a run before it running late), at the first instant
    from which it fits beside those placed before it (in the order of their planned
    starts), for as long as it was planned. So a picture of the calendar never stacks
    above capacity what the runs' slots will not let start (a component whose demand
    alone is over the pool's capacity stays at its planned start). A component also
    starts no sooner than the end of those of its run planned to end before it began (its
    inputs among them: the calendar does not store the run's graph, the plan's order
    stands for it), so a late step moves the steps planned after it too."""
    placed: list[tuple[Reservation, float, float]] = []
    for r in items:
        if r.state == "running":
            placed.append((r, r.start, max(r.finish, now + OVERRUN_SECONDS)))
    for r in sorted((r for r in items if r.state == "planned"), key=lambda r: (r.start, r.run, r.component)):
        length = max(r.finish - r.start, 0.0)
        before = [end for o, _, end in placed if o.run == r.run and o.finish <= r.start + 1e-6]
        earliest = max(r.start, now, *before)
        options = sorted({earliest, *(end for _, _, end in placed if end > earliest)})
        start = next((t for t in options if _fits(r, t, t + length, placed, capacity)), earliest)
        placed.append((r, start, start + length))
    return placed


def _fits(
    r: Reservation, start: float, end: float, placed: list[tuple[Reservation, float, float]], capacity: Mapping
) -> bool:
    """`r` over [start, end) beside `placed` stays within `capacity` (checked at each
    instant the load can rise: `start` and the placed starts inside the span)."""
    marks = {start, *(s for _, s, _ in placed if start < s < end)}
    for t in marks:
        for resource, amount in r.demand.items():
            held = sum(float(o.demand.get(resource, 0.0)) for o, s, e in placed if s <= t < e)
            if held + float(amount) > float(capacity.get(resource, 0.0)) + 1e-9:
                return False
    return True


def gantt_text(
    items: list[Reservation], now: float, width: int = WIDTH, capacity: Mapping[str, float] | None = None
) -> list[str]:
    """One line per reservation: `#` running, `-` planned, from now to the last finish;
    with the pool's `capacity`, each where the pool can hold it (expected_places)."""
    if not items:
        return []
    places = expected_places(items, capacity, now) if capacity is not None else [(r, r.start, r.finish) for r in items]
    end = max(max(finish for _, _, finish in places), now + 1.0)
    scale = width / (end - now)
    label = max(len(f"{r.run_name or r.run[:8]}/{r.component}") for r in items)
    lines = [f"{'':{label}} |now{'':{width - 3}}| {utc(end)}"]
    for r, start, finish in sorted(places, key=lambda p: (p[1], p[0].run, p[0].component)):
        a = int(max(0.0, start - now) * scale)
        b = max(a + 1, int(max(0.0, finish - now) * scale))
        bar = " " * a + MARKS.get(r.state, "?") * (min(b, width) - a)
        lines.append(f"{r.run_name or r.run[:8]:>{label - len(r.component) - 1}}/{r.component} |{bar:{width}}|")
    return lines


def waiting_runs(entries: list[CalendarEntry], pool: str | None = None) -> list[tuple[CalendarEntry, float, float]]:
    """(entry, expected start, expected finish) of every run none of whose components has
    started yet, by expected start (`squeue --start`)."""
    out = []
    for entry in entries:
        items = [r for r in entry.reservations if pool is None or r["pool"] == pool]
        if items and all(r.get("state", "planned") == "planned" for r in entry.reservations):
            out.append((entry, min(float(r["start"]) for r in items), entry.eta))
    return sorted(out, key=lambda e: e[1])


def runs_under_way(entries: list[CalendarEntry], pool: str | None = None) -> list[tuple[CalendarEntry, int, int]]:
    """(entry, components done, components in all) of every run some of whose components
    started, with a component on `pool`, by expected finish (the entry's ETA, which the
    run keeps current as its components start and end)."""
    out = []
    for entry in entries:
        states = [r.get("state", "planned") for r in entry.reservations]
        on_pool = any(pool is None or r["pool"] == pool for r in entry.reservations)
        if on_pool and any(state != "planned" for state in states):
            out.append((entry, states.count("done"), len(states)))
    return sorted(out, key=lambda e: e[0].eta)


def _held_beyond_running(held: Mapping[str, float], items: list) -> dict[str, float]:
    """What the pool's limits hold beyond the demand of the components the calendar shows running."""
    running: dict[str, float] = {}
    for r in items:
        if r.state == "running":
            for resource, amount in r.demand.items():
                running[resource] = running.get(resource, 0.0) + float(amount)
    beyond = {resource: max(0.0, amount - running.get(resource, 0.0)) for resource, amount in held.items()}
    # above the slots' rounding (a component's memory is held in whole MiB)
    return beyond if any(amount > 0.01 for amount in beyond.values()) else {}


def calendar_text(
    entries: list[CalendarEntry],
    capacities: Mapping[str, Mapping[str, float]],
    held: Mapping[str, Mapping[str, float]],
    now: float,
) -> list[str]:
    """The whole report, one pool after the other."""
    lines = []
    for pool, capacity in sorted(capacities.items()):
        items = [r for r in reservations(entries, pool) if r.state != "done"]
        lines.append(f"pool {pool}: {_amounts(capacity)}  held now: {_amounts(held.get(pool, {}))}")
        unexplained = _held_beyond_running(held.get(pool, {}), items)
        if unexplained:
            lines.append(
                f"  held by no running component: {_amounts(unexplained)} (a run between two of its steps, a "
                "waiting step that has the pool's turn and keeps what it took until it has all it needs, a lease "
                "left for this machine's next run, or a run that died: its lease ends within "
                "PLANFLOW_SLOT_LEASE_SECONDS, 60 s)"
            )
        if not items:
            lines += ["  (nothing running or planned)", ""]
            continue
        lines.append(f"  {'run':<24} {'component':<20} {'state':<8} {'start':<26} {'finish':<26} resources")
        for r in sorted(items, key=lambda r: (r.start, r.run, r.component)):
            state = _state(r, now)
            lines.append(
                f"  {(r.run_name or r.run)[:24]:<24} {r.component[:20]:<20} {state:<8} "
                f"{_when(r.start, now):<26} {_when(r.finish, now):<26} {_amounts(r.demand)}"
            )
        lines += ["", *("  " + g for g in gantt_text(items, now, capacity=capacity)), ""]
        lines += _runs_section(
            "waiting runs (expected start -> finish)",
            [(e, f"{_when(start, now)} -> {_when(finish, now)}") for e, start, finish in waiting_runs(entries, pool)],
        )
        lines += _runs_section(
            "runs under way (components done, expected finish)",
            [
                (e, f"{done}/{total} done, finish {_when(e.eta, now)}{', late' if e.eta < now - 1.0 else ''}")
                for e, done, total in runs_under_way(entries, pool)
            ],
        )
    return lines


def _state(r: Reservation, now: float) -> str:
    """The state column: `waiting` (planned, ready, refused its slots), `late` (planned,
    its start passed), `overrun` (running past its planned finish), else the state."""
    if r.state == "planned":
        return "waiting" if r.waiting else ("late" if r.start < now - 1.0 else "planned")
    return "overrun" if r.state == "running" and r.finish < now - 1.0 else r.state


def _runs_section(title: str, rows: list[tuple[CalendarEntry, str]]) -> list[str]:
    """A titled list of runs, one line each (run, pipeline, then `rows`' text); none: nothing."""
    if not rows:
        return []
    lines = [f"  {title}:"]
    for entry, said in rows:
        lines.append(f"  {entry.flow_run_name or entry.flow_run_id:<24} {entry.pipeline:<20} {said}")
    return [*lines, ""]


def calendar_png(entries: list[CalendarEntry], pool: str, capacity: Mapping[str, float], now: float) -> bytes:
    """Gantt bars of every run's components on `pool` (colour per run), and beneath them
    the cpu reserved over time against the pool's capacity."""
    items = [r for r in reservations(entries, pool) if r.state != "done"]
    places = sorted(expected_places(items, capacity, now), key=lambda p: (p[1], p[0].run, p[0].component))
    # matplotlib (half a second to import) only for `--png`, not for every `planflow` command
    matplotlib = importlib.import_module("matplotlib")
    figure = importlib.import_module("matplotlib.figure")
    palette = matplotlib.colormaps["tab10"]
    runs = sorted({r.run for r in items})
    colours = {run: palette(i % 10) for i, run in enumerate(runs)}
    fig = figure.Figure(figsize=(10, max(3.5, 0.4 * len(items) + 2.5)), dpi=100)
    gantt, load = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    for row, (r, start, finish) in enumerate(places):
        gantt.barh(
            row,
            finish - start,
            left=start - now,
            color=colours[r.run],
            alpha=1.0 if r.state == "running" else 0.45,
            edgecolor=colours[r.run],
            hatch="//" if r.state == "planned" and start > max(r.start, now) + 0.5 else None,  # moved: late
        )
    gantt.set_yticks(range(len(places)), [f"{r.run_name or r.run[:8]}/{r.component}" for r, _, _ in places])
    gantt.invert_yaxis()
    gantt.set_title(
        f"pool {pool}: running (solid) and planned (light; hatched: later than planned, behind a late one) "
        f"components, {utc(now)}",
        fontsize=9,
    )
    marks, used = cpu_over_time(places, now)
    load.step(marks, used, where="post", label="cpu reserved")
    load.axhline(capacity.get("cpu", 0.0), color="black", linestyle="--", linewidth=1, label="cpu capacity")
    load.set_xlabel("seconds from now")
    load.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def cpu_over_time(places: list[tuple[Reservation, float, float]], now: float) -> tuple[list[float], list[float]]:
    """The cpu the placed components reserve, as a step function of seconds from `now`."""
    marks = sorted({0.0, *(t - now for _, start, finish in places for t in (max(start, now), finish))})
    used = [sum(r.demand.get("cpu", 0.0) for r, s, f in places if s - now <= t < f - now) for t in marks]
    return marks, used


def held_now(capacities: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Pool -> resource -> amount all runs hold now (the limits' active slots)."""
    names = {(p, r): limit_name(p, r) for p in capacities for r in RESOURCES}
    active = active_slots(list(names.values()))
    out: dict[str, dict[str, float]] = {p: {} for p in capacities}
    for (p, r), name in names.items():
        out[p][r] = active.get(name, 0) / SLOTS_PER_UNIT[r]
    return out


def calendar(
    pool: str | None = typer.Argument(None, help="Only this pool (default: every pool)."),
    png: Path | None = typer.Option(None, "--png", help="Also draw the pool's Gantt picture to this PNG file."),
) -> None:
    """The pools' calendar: running and planned components of all runs, a Gantt
    picture, and each waiting run's expected start and finish."""
    if png is not None:
        check_writable(png, "--png")
    ensure_server()
    capacities = {name: p.capacity() for name, p in load_pools().items()}
    if pool is not None:
        if pool not in capacities:
            fail(
                f"pool '{pool}' has no ResourcePool block (pools: {', '.join(sorted(capacities))}). "
                "Fix: name one of those, or create it (planflow pools set)"
            )
        capacities = {pool: capacities[pool]}
    if png is not None and len(capacities) != 1:  # before the calendar is printed: nothing done
        example = next(iter(sorted(capacities)), "local")
        fail(f"--png draws one pool: name it, e.g. `planflow calendar {example} --png calendar.png`", code=2)
    entries, now = read_calendar(clean=True), time.time()
    for line in calendar_text(entries, capacities, held_now(capacities), now):
        say(line)
    if png is not None:
        name = next(iter(capacities))
        write_file(png, calendar_png(entries, name, capacities[name], now), "--png")
        say(f"wrote {png}")
