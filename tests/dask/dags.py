"""Small pipelines for the Dask tests; their modules import on the Dask workers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import distributed

from planflow.core.component import component
from planflow.core.pipeline import Pipeline

KILL_WAIT_SECONDS = 60.0  # bound on how long the victim waits to be killed


class Span:
    """When a step held its worker, and which worker process it was (as key metrics: the
    dispatcher gets those, computed on the worker)."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end, self.pid = start, end, os.getpid()
        self.worker = distributed.get_worker().name

    def key_metrics(self) -> dict[str, float]:
        return {"start": self.start, "end": self.end, "pid": self.pid}


def _span(hold_seconds: float) -> Span:
    started = time.time()
    time.sleep(hold_seconds)
    return Span(started, time.time())


@component(cpu=2, mem_gib=0.5, est_seconds=0.3)
def hold_a(hold_seconds: float = 0.4) -> Span:
    return _span(hold_seconds)


@component(cpu=2, mem_gib=0.5, est_seconds=0.3)
def hold_b(hold_seconds: float = 0.4) -> Span:
    return _span(hold_seconds)


@component(cpu=2, mem_gib=0.5, est_seconds=0.3)
def hold_c(hold_seconds: float = 0.4) -> Span:
    return _span(hold_seconds)


@component(cpu=2, mem_gib=0.5, est_seconds=0.3)
def hold_d(hold_seconds: float = 0.4) -> Span:
    return _span(hold_seconds)


holds = Pipeline("dask-holds", [hold_a, hold_b, hold_c, hold_d], description="four steps that fill a worker each")


# mem_gib 1.5 each on workers of 2 GiB: victim and killer never share a worker.
@component(cpu=1, mem_gib=1.5, est_seconds=1.0)
def victim(marker_dir: str = "") -> list[int]:
    """First attempt: records its worker's pid and waits to be killed; a re-run (on
    another worker, or the restarted one) returns every pid that ran it."""
    pids = Path(marker_dir) / "victim.pids"
    first = not pids.exists()
    with pids.open("a") as file:
        file.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while first and time.monotonic() < deadline:
        time.sleep(0.05)
    return [int(line) for line in pids.read_text().split()]


@component(cpu=1, mem_gib=1.5, est_seconds=1.0)
def killer(marker_dir: str = "") -> int:
    """Kills the worker process running `victim` (a SIGKILL: no goodbye to the scheduler)."""
    pids = Path(marker_dir) / "victim.pids"
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    # the victim's line, whole: the file exists a moment before its pid is written in it
    while not (pids.exists() and pids.read_text().endswith("\n")) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pids.read_text().split()[0])
    os.kill(pid, 9)
    return pid


@component(cpu=1, mem_gib=0.25, est_seconds=0.2)
def after(victim: list[int], killer: int) -> dict:
    return {"victim_pids": victim, "killed": killer}


kill_pair = Pipeline("dask-kill", [victim, killer, after], description="one worker killed mid-run")


@component(cpu=1, mem_gib=0.25, est_seconds=0.2)
def dies(marker_dir: str = "") -> int:
    """Kills the worker process running it (a SIGKILL), every time it runs."""
    with (Path(marker_dir) / "dies.pids").open("a") as file:
        file.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


keeps_dying = Pipeline("dask-keeps-dying", [dies], description="a step whose workers die every time it runs")


@component(cpu=1, mem_gib=3, est_seconds=0.2)
def too_big() -> int:
    return 1


too_big_pipeline = Pipeline("dask-too-big", [too_big], description="asks for more memory than any worker offers")


_FLOWS_SEEN: list[object] = []  # on a worker: kept alive, so that no two flows share an id


class ContextSeen:
    """Which worker process ran a step, and which object its run's flow was there."""

    def __init__(self) -> None:
        from prefect.context import FlowRunContext

        flow = FlowRunContext.get().flow
        _FLOWS_SEEN.append(flow)
        self.pid, self.flow = os.getpid(), id(flow)

    def key_metrics(self) -> dict[str, float]:
        return {"pid": self.pid, "flow": self.flow}  # ids fit a float's 53 bits exactly


def _sees(i: int):
    def step() -> ContextSeen:
        return ContextSeen()

    step.__name__ = step.__qualname__ = f"sees_{i}"
    step.__module__ = __name__
    globals()[step.__name__] = step  # importable by name on the workers
    return component(step, cpu=0.5, mem_gib=0.1, est_seconds=0.05)


context_seen = Pipeline("dask-context", [_sees(i) for i in range(8)], description="eight steps that name their flow")


@component(cpu=0.5, mem_gib=0.25, est_seconds=0.2, cache="inputs")
def cached_square(x: int = 3) -> int:
    return x * x


cached = Pipeline("dask-cached", [cached_square])
