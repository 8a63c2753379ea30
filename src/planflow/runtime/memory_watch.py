"""A process-pool child held to its planned memory limit, and its kill told apart.

A container has a memory limit the kernel enforces, and Docker and Kubernetes say when
it killed for it (oom.py). A child flow run on a process pool has none: it shares the
machine (and its cgroup) with the worker and everything else. Its kill by the kernel's
OOM killer is a SIGKILL (exit -9/137) like any other: the machine-wide `oom_kill`
counter (/proc/vmstat) or the shared cgroup's says that *some* process was killed, not
which, and `dmesg` is usually not readable. So planflow sets the limit itself:

- the distributed executor passes the planned `mem_limit` to a process-pool child
  (PLANFLOW_MEM_LIMIT_BYTES in its environment);
- the child's watchdog (`MemoryWatch`, a thread) holds the *component's* memory to it:
  the RSS of the flow-run process and its children above what the process held when
  the component started (Prefect's own ~0.3 GiB is not the component's), sampled every
  SAMPLE_SECONDS, and the process's peak RSS (getrusage) once more when the component is
  done, when that peak was reached meanwhile (a peak between two samples); past the
  limit it writes down why (result key `planflow-oom-<flow run id>`: the component's
  peak, the limit, the pid) and kills its own process with SIGKILL, as the kernel would
  have;
- the parent, seeing the child crash, reads that record (`oom_from_watchdog`): an OOM
  kill, with the figures, escalated like a container's.

What is told: a child that went past its planned limit (definitely, with the peak seen).
What is not: a child the kernel killed before its watchdog saw it over its limit (the
machine ran out of memory first), or one killed by another SIGKILL: both stay crashes.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import psutil
from prefect.results import ResultStore

from planflow.runtime.memory import GIB
from planflow.runtime.oom import OomKill

LIMIT_ENV = "PLANFLOW_MEM_LIMIT_BYTES"  # set by the executor on process-pool children
SAMPLE_SECONDS = 0.05
log = logging.getLogger("planflow.memory")


def oom_key(flow_run_id: str) -> str:
    """Where a child's watchdog writes why it killed it."""
    return f"planflow-oom-{flow_run_id}"


def limit_from_env() -> int | None:
    """The planned limit in bytes this child is held to, or None (no watchdog)."""
    raw = os.environ.get(LIMIT_ENV, "").strip()
    if not raw:
        return None
    try:
        limit = int(raw)
    except ValueError:
        log.warning("%s=%r is not a number of bytes: no memory watchdog (Fix: unset it or give bytes)", LIMIT_ENV, raw)
        return None
    return limit if limit > 0 else None


def rss_now() -> int:
    """Bytes resident now in this process and its children."""
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue  # it ended meanwhile
    return total


def peak_rss() -> int:
    """This process's peak RSS so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryWatch:
    """Kill this process (SIGKILL) once the component's memory (RSS above what the
    process held when the watch began) goes past `limit_bytes`, after
    `record(peak_bytes, limit_bytes)` wrote down why. A context manager around the
    component; `check(final=True)` also reads the process's peak RSS (the end: a peak
    between two samples)."""

    def __init__(
        self,
        limit_bytes: int,
        record: Callable[[int, int], None],
        interval: float = SAMPLE_SECONDS,
        kill: Callable[[], None] | None = None,
    ) -> None:
        self.limit, self.record, self.interval = limit_bytes, record, interval
        self.kill = kill or (lambda: os.kill(os.getpid(), signal.SIGKILL))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="planflow-memory-watch", daemon=True)
        self.baseline, self.peak_before = rss_now(), peak_rss()
        self.peak = 0  # the component's highest memory seen so far (bytes)

    def check(self, final: bool = False) -> None:
        used = rss_now() - self.baseline
        if final and peak_rss() > self.peak_before:  # a new peak of the process: reached by the component
            used = max(used, peak_rss() - self.baseline)
        self.peak = max(self.peak, used)
        if self.peak > self.limit:
            try:
                self.record(self.peak, self.limit)
            except Exception as exc:  # noqa: BLE001 - killed all the same: the limit holds
                log.warning("could not write down the memory kill: %r", exc)
            self.kill()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(max(1.0, 4 * self.interval))
        self.check(final=True)


def watch_record(store: ResultStore, flow_run_id: str) -> Callable[[int, int], None]:
    """The `record` of a child's watchdog: its figures, in result storage by flow run id."""

    def record(peak: int, limit: int) -> None:
        store.write({"peak_bytes": peak, "limit_bytes": limit, "pid": os.getpid()}, key=oom_key(flow_run_id))

    return record


def oom_from_watchdog(flow_run_id: str) -> OomKill | None:
    """The kill a process-pool child's watchdog wrote down, or None when it wrote none."""
    try:
        found: Any = ResultStore().read(oom_key(flow_run_id)).result
    except Exception:  # noqa: BLE001 - nothing written: not a kill for memory we can tell
        return None
    if not isinstance(found, dict) or "limit_bytes" not in found:
        return None
    peak, limit = found.get("peak_bytes", 0) / GIB, found["limit_bytes"] / GIB
    return OomKill(
        where=f"process pool child pid {found.get('pid', '?')} (planflow's memory watchdog: the component's "
        f"peak RSS {peak:.3g} GiB > mem_limit {limit:.3g} GiB, SIGKILL)",
        limit_gib=limit,
        exit_code=-9,
        peak_gib=peak or None,
    )
