"""Release components when their inputs are ready and their pool has room.

The dispatcher keeps a per-pool resource ledger: a component is released only
when its demand fits what is left of its pool's capacity, so capacities hold
even when actual durations differ from the estimates. Ready components are
released in priority order (the plan's start times, or topological order).
The ledger is this run's fast path; with an `admit` hook (admission.py) a step
also takes its pool's slots shared with every other run before it starts.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

RESOURCES = ("cpu", "gpu", "mem_gib")
_EPS = 1e-9


class CapacityError(ValueError):
    """A component asks for more than its pool could ever give."""


@dataclass(frozen=True)
class Assignment:
    """Where and when (relative order) one step runs, and what it holds while it runs."""

    step: str
    pool: str
    demand: Mapping[str, float]
    priority: float  # lower goes first among ready steps (e.g. the planned start)
    planned_start: float | None = None
    planned_finish: float | None = None


@dataclass
class ResourceLedger:
    """What each pool has in use now, and the highest use seen (for checks)."""

    capacity: Mapping[str, Mapping[str, float]]
    in_use: dict[str, dict[str, float]] = field(default_factory=dict)
    peak: dict[str, dict[str, float]] = field(default_factory=dict)
    # an executor's thread may take more for a step it runs again (oom_next.more_slots)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def __post_init__(self) -> None:
        for pool in self.capacity:
            self.in_use[pool] = dict.fromkeys(RESOURCES, 0.0)
            self.peak[pool] = dict.fromkeys(RESOURCES, 0.0)

    def over_capacity(self, pool: str, demand: Mapping[str, float]) -> dict[str, tuple[float, float]]:
        """The resources of `demand` beyond `pool`'s whole capacity, each (demand, capacity):
        what no wait can make fit."""
        cap = self.capacity[pool]
        return {r: (d, cap.get(r, 0.0)) for r, d in demand.items() if d > cap.get(r, 0.0) + _EPS}

    def check_fits_empty(self, step: str, pool: str, demand: Mapping[str, float]) -> None:
        over = self.over_capacity(pool, {r: demand.get(r, 0.0) for r in RESOURCES})
        if over:
            detail = ", ".join(f"{r}={d:g} > capacity {c:g}" for r, (d, c) in over.items())
            raise CapacityError(
                f"step '{step}' can never run on pool '{pool}': {detail}. Fix: lower the "
                f"component's demand or raise the pool's capacity (ResourcePool block '{pool}')"
            )

    def fits(self, pool: str, demand: Mapping[str, float]) -> bool:
        with self.lock:
            used, cap = self.in_use[pool], self.capacity[pool]
            return all(used[r] + demand.get(r, 0.0) <= cap.get(r, 0.0) + _EPS for r in RESOURCES)

    def acquire(self, pool: str, demand: Mapping[str, float]) -> None:
        with self.lock:
            for r in RESOURCES:
                self.in_use[pool][r] += demand.get(r, 0.0)
                self.peak[pool][r] = max(self.peak[pool][r], self.in_use[pool][r])

    def release(self, pool: str, demand: Mapping[str, float]) -> None:
        with self.lock:
            for r in RESOURCES:
                self.in_use[pool][r] = max(0.0, self.in_use[pool][r] - demand.get(r, 0.0))


@dataclass
class StepRecord:
    """What happened to one step: when it was released and finished, relative to t0."""

    step: str
    pool: str
    state: str = "Pending"  # Pending | Running | Completed | Failed | Skipped | Crashed (its run interrupted meanwhile)
    started: float | None = None
    finished: float | None = None
    error: BaseException | None = None
    result: Any = None
    # What the step used, where its executor measured it: runtime/isolation.py's Usage
    # (process-isolated steps), memory.py and oom.py (child flow runs): peak memory, kills
    # for memory, and the memory limit it last ran with.
    usage: Any = None
    peak_mem_gib: float | None = None
    oom_kills: int = 0
    mem_limit_gib: float | None = None
    cached: bool = False  # completed by reading its result from the cache (Prefect's Cached state)
    # How long it ran where it ran, when its executor measured that apart from the queue
    # (dask_executor.py: a worker's compute time); None: `seconds` (release to completion)
    ran_seconds: float | None = None
    attempts: int = 1  # its task's attempts, where its executor counted them (Prefect's retries)

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    @property
    def learned_seconds(self) -> float | None:
        """What the history learns of it: how long it ran where it ran, when its executor
        measured that, else `seconds`."""
        return self.ran_seconds or self.seconds


Listener = Callable[[str, StepRecord], None]
# Takes an assignment's slots shared with other runs: the held slots (closed when the step
# ends), or None while they are busy. It may raise (e.g. a wait that ran out of time).
Admit = Callable[[Assignment], AbstractContextManager[Any] | None]
POLL_SECONDS = 0.5  # how often steps waiting for shared slots try again (unless `admit` has `poll_seconds`)
SIGNAL_SLICE_SECONDS = 0.5  # the longest the dispatcher waits without its thread taking a signal (Ctrl-C)
_WAKE: tuple[Any, Any, float] = (None, None, 0.0)  # put in the completions' queue by admit's wake-up


class AdmitWhen:
    """`take` for the steps `allowed` lets ask (None for the others, who wait), keeping
    `take`'s pace (`poll_seconds`) and handing its `prepare` only the allowed steps, so
    that no batch takes slots for a step that may not ask yet."""

    def __init__(self, take: Admit, allowed: Callable[[Assignment], bool]) -> None:
        self.take, self.allowed = take, allowed
        self._prepare = getattr(take, "prepare", None)
        self.wake_with = getattr(take, "wake_with", None)

    @property
    def poll_seconds(self) -> float:
        return getattr(self.take, "poll_seconds", POLL_SECONDS)

    def __call__(self, a: Assignment) -> AbstractContextManager[Any] | None:
        return self.take(a) if self.allowed(a) else None

    def prepare(self, ready: Iterable[Assignment]) -> None:
        if self._prepare is not None:
            self._prepare([a for a in ready if self.allowed(a)])


def _releasable(
    waiting: list[str],
    assignments: Mapping[str, Assignment],
    upstream: Mapping[str, tuple[str, ...]],
    records: Mapping[str, StepRecord],
    ledger: ResourceLedger,
) -> list[Assignment]:
    """The ready steps that fit this run's ledger together, in release order."""
    trial = ResourceLedger(ledger.capacity)
    trial.in_use = {pool: dict(used) for pool, used in ledger.in_use.items()}
    chosen = []
    for step in waiting:
        a = assignments[step]
        if all(records[d].state == "Completed" for d in upstream[step]) and trial.fits(a.pool, a.demand):
            trial.acquire(a.pool, a.demand)
            chosen.append(a)
    return chosen


def _next(done: queue.Queue[Any], wait: float | None) -> Any:
    """The next item of `done` within `wait` seconds (None: no bound), else queue.Empty.
    Waited in slices of SIGNAL_SLICE_SECONDS: a signal (Ctrl-C) that the kernel hands to
    another of the process's threads reaches the main thread's handler only when its wait
    wakes, and a run waiting for a long step ignored Ctrl-C until the step ended."""
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        left = SIGNAL_SLICE_SECONDS if deadline is None else min(SIGNAL_SLICE_SECONDS, deadline - time.monotonic())
        if left <= 0:
            raise queue.Empty
        try:
            return done.get(timeout=left)
        except queue.Empty:
            if deadline is not None and time.monotonic() >= deadline:
                raise


def dispatch(
    upstream: Mapping[str, tuple[str, ...]],
    assignments: Mapping[str, Assignment],
    capacity: Mapping[str, Mapping[str, float]],
    start: Callable[[str, dict[str, Any]], Any],
    listener: Listener | None = None,
    admit: Admit | None = None,
    ledger: ResourceLedger | None = None,
) -> tuple[dict[str, StepRecord], ResourceLedger]:
    """Run every step once its upstream steps completed and its demand fits.

    `start(step, outputs)` launches the step and returns a future with
    `add_done_callback` and `result()` (a Prefect future). On the first failure
    nothing new is released; steps in flight finish, the rest are Skipped.

    `admit` takes a step's slots shared with other runs (admission.py) once it fits
    this run's own ledger; a step it refuses waits and is tried again every
    `admit.poll_seconds` (PLANFLOW_SLOT_POLL_SECONDS; POLL_SECONDS for an `admit` without
    it); an error it raises fails the step (nothing is held). When `admit` has a
    `prepare` method (run_slots.py), it hears the steps each round may release first;
    with `wake_with`, it is handed a call that ends the wait for a new round at once.
    """
    ledger = ResourceLedger(capacity) if ledger is None else ledger  # given: the executor may take more
    for a in assignments.values():
        ledger.check_fits_empty(a.step, a.pool, a.demand)
    records = {s: StepRecord(s, a.pool) for s, a in assignments.items()}
    notify = listener or (lambda event, record: None)
    # each completion with the time it happened: the dispatcher may hear of it later (it
    # releases every ready step before it listens), and the history learns what it records
    done: queue.Queue[tuple[str, Any, float]] = queue.Queue()
    outputs: dict[str, Any] = {}
    waiting = sorted(assignments, key=lambda s: (assignments[s].priority, s))
    running: set[str] = set()
    held: dict[str, AbstractContextManager[Any]] = {}
    take = admit or (lambda a: nullcontext())
    prepare = getattr(admit, "prepare", None)
    wake_with = getattr(admit, "wake_with", None)
    if wake_with is not None:  # slots a refused step waits for came free: a round at once
        wake_with(lambda: done.put(_WAKE))
    failed = False
    t0 = time.monotonic()

    while waiting or running:
        blocked = False  # a ready step waits for slots other runs hold
        if not failed:
            if prepare is not None:  # the steps this round may release, so admission can batch
                prepare(_releasable(waiting, assignments, upstream, records, ledger))
            for step in list(waiting):
                a = assignments[step]
                ready = all(records[d].state == "Completed" for d in upstream[step])
                if not (ready and ledger.fits(a.pool, a.demand)):
                    continue
                record = records[step]
                try:
                    slots = take(a)
                except Exception as exc:  # admission gave up: the step fails, holding nothing
                    waiting.remove(step)
                    record.state, record.error, failed = "Failed", exc, True
                    record.started = record.finished = time.monotonic() - t0
                    notify("failed", record)
                    break
                if slots is None:
                    blocked = True
                    continue
                held[step] = slots
                ledger.acquire(a.pool, a.demand)
                waiting.remove(step)
                running.add(step)
                record.state, record.started = "Running", time.monotonic() - t0
                notify("started", record)
                try:
                    future = start(step, outputs)
                except BaseException:
                    held.pop(step).__exit__(None, None, None)
                    raise
                future.add_done_callback(lambda f, s=step: done.put((s, f, time.monotonic())))
        if not running and not blocked:
            break  # failed, or nothing can ever become ready
        try:
            # a little jitter, so that runs refused together do not all ask again together; the
            # pace is read each time (a step that claims its pool's slots asks more often)
            poll = getattr(admit, "poll_seconds", POLL_SECONDS)
            wait = poll * random.uniform(0.8, 1.2) if blocked else None  # noqa: S311 (jitter, not secrets)
            ended_now = [_next(done, wait)]
        except queue.Empty:
            continue
        # every step that ended meanwhile, before the next round: a step that ended while the
        # round before waited for the server's answers was otherwise seen only a round later,
        # its slots idle that long (the fleet benchmark's trace: 8 core-s in 173 s)
        while True:
            try:
                ended_now.append(done.get_nowait())
            except queue.Empty:
                break
        for step, future, ended in ended_now:
            if step is None:  # woken by admit: ask again now
                continue
            running.discard(step)
            a, record = assignments[step], records[step]
            held.pop(step).__exit__(None, None, None)
            ledger.release(a.pool, a.demand)
            record.finished = ended - t0
            try:
                record.result = future.result()
            except BaseException as exc:  # the step's own error, reported as is
                record.state, record.error, failed = "Failed", exc, True
                notify("failed", record)
                continue
            outputs[step] = record.result
            # result() kept the final state: reading it asks no server
            record.state, record.cached = "Completed", getattr(getattr(future, "state", None), "name", "") == "Cached"
            notify("completed", record)

    for step in waiting:
        records[step].state = "Skipped"
        notify("skipped", records[step])
    return records, ledger
