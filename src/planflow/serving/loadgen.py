"""A bounded load generator on loopback (asyncio + httpx), for the tests and the benchmark.

`run_load` keeps `concurrency` requests in flight until `total` have been sent or
`stop` is set, and counts every answer that is not a 200 as a failure, with its reason.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    reasons: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    runs: Counter = field(default_factory=Counter)  # which run answered (the "run" field)
    seconds: float = 0.0

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _load(
    url: str,
    bodies: Sequence[Any],
    total: int,
    concurrency: int,
    timeout: float,
    stop: threading.Event | None,
    result: LoadResult,
) -> LoadResult:
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            nonlocal sent
            while sent < total and not (stop and stop.is_set()):
                body = bodies[sent % len(bodies)]
                sent += 1
                started = time.perf_counter()
                try:
                    response = await client.post(url, json=body)
                except httpx.HTTPError as exc:
                    result.failed += 1
                    result.reasons[type(exc).__name__] += 1
                    continue
                if response.status_code == 200:
                    result.ok += 1
                    result.latencies.append(time.perf_counter() - started)
                    result.runs[response.json().get("run")] += 1
                else:
                    result.failed += 1
                    result.reasons[f"HTTP {response.status_code}"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - started
    return result


def run_load(
    url: str,
    bodies: Sequence[Any],
    total: int,
    concurrency: int = 4,
    timeout: float = 10.0,
    stop: threading.Event | None = None,
    result: LoadResult | None = None,
) -> LoadResult:
    """POST `bodies` (round robin) to `url`: at most `total` requests, each bounded by
    `timeout`; counts go into `result` as they come (another thread may watch it)."""
    return asyncio.run(_load(url, bodies, total, concurrency, timeout, stop, result or LoadResult()))


class BackgroundLoad:
    """`run_load` in a thread: start it, do something under load, then `finish()`."""

    def __init__(self, url: str, bodies: Sequence[Any], total: int, concurrency: int = 4) -> None:
        self.stop = threading.Event()
        self.result = LoadResult()  # filled while the load runs
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(url, bodies, total, concurrency), name="planflow-load", daemon=True
        )

    def _run(self, url: str, bodies: Sequence[Any], total: int, concurrency: int) -> None:
        try:
            run_load(url, bodies, total, concurrency, stop=self.stop, result=self.result)
        finally:
            self._done.set()

    def start(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def finish(self, timeout: float = 60.0) -> LoadResult:
        self.stop.set()
        self._thread.join(timeout)
        if not self._done.is_set():
            raise TimeoutError(f"the load generator did not finish within {timeout} s")
        return self.result
