"""Re-planning a run's waiting components into what the other runs now leave.

A run's plan is made once, under the planning slot, into the pools' calendar. When
another run's component ends early or late, the free time on the pool moves: the runs
planned after it must move too (Slurm's backfill recomputes every pending job's expected
start the same way). `list_schedule` places a run's components that have not started,
in their order, each at the earliest time its upstream components are done and its
demand fits beside everything else on its pool (the other runs' reservations, this
run's running components and those already placed). It is also how a `fifo` run, which
has no plan, gets its expected start and finish for the calendar.

Times are seconds from `now` (the placement's time 0), like the planner's.

    >>> held = [(0.0, 10.0, {"cpu": 2})]            # another run holds the pool for 10 s
    >>> todo = [Item("a", "p", 3.0, {"cpu": 1}, ()), Item("b", "p", 2.0, {"cpu": 2}, ("a",))]
    >>> list_schedule(todo, {"p": {"cpu": 2}}, {"p": held})
    {'a': (10.0, 13.0), 'b': (13.0, 15.0)}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from planflow.runtime.dispatch import RESOURCES

EPS = 1e-9
Interval = tuple[float, float, Mapping[str, float]]


@dataclass(frozen=True)
class Item:
    """One component still to place: its pool, duration (s), demand and upstream steps."""

    step: str
    pool: str
    seconds: float
    demand: Mapping[str, float]
    after: tuple[str, ...]


def fits(
    intervals: Sequence[Interval], capacity: Mapping[str, float], demand: Mapping[str, float], s: float, e: float
) -> bool:
    """Whether `demand` fits beside `intervals` during [s, e): the use only rises at a
    start, so checking s and every start inside the window is enough."""
    points = [s] + [a for a, b, _ in intervals if s < a < e]
    for t in points:
        for r in RESOURCES:
            used = sum(float(d.get(r, 0.0)) for a, b, d in intervals if a <= t < b)
            if used + float(demand.get(r, 0.0)) > float(capacity.get(r, 0.0)) + EPS:
                return False
    return True


def list_schedule(
    items: Sequence[Item],
    capacities: Mapping[str, Mapping[str, float]],
    held: Mapping[str, Sequence[Interval]],
    done_at: Mapping[str, float] | None = None,
) -> dict[str, tuple[float, float]]:
    """(start, finish) of each item, placed in the given order (upstream first) at the
    earliest time its upstream steps are over (`done_at`: steps already running or done,
    their expected end) and it fits its pool beside `held` and the items placed before.
    An item that never fits (demand above capacity) starts after everything held."""
    finish: dict[str, float] = dict(done_at or {})
    placed: dict[str, list[Interval]] = {pool: list(held.get(pool, ())) for pool in capacities}
    out: dict[str, tuple[float, float]] = {}
    for item in items:
        ready = max([0.0] + [finish.get(d, 0.0) for d in item.after])
        busy = placed.setdefault(item.pool, [])
        candidates = sorted({ready} | {b for _, b, _ in busy if b > ready})
        start = candidates[-1]
        for t in candidates:
            if fits(busy, capacities.get(item.pool, {}), item.demand, t, t + item.seconds):
                start = t
                break
        end = start + max(item.seconds, 0.0)
        busy.append((start, end, item.demand))
        finish[item.step] = end
        out[item.step] = (start, end)
    return out
