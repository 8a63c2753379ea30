"""Peak memory: measured where a component runs alone, learned for the plans.

**Measured.** A child flow run (distributed mode) measures itself when its component
is done (`measure_peak`): in a container of its own (Docker, Kubernetes), the container's cgroup peak
(cgroup v2 `memory.peak`, or v1 `memory.max_usage_in_bytes`, which Docker mounts as the
container's own); elsewhere (a process pool) the peak RSS of the flow-run process
(`getrusage`, itself and its children). The parent reads the figure back with the
output, shows it in the run summary beside the declaration, pushes it as a metric and
stores it in the history record (`peak_mem_gib`, keyed by code version, history.py).

**Learned.** Once a component's current code version has history, the planner uses

    need = max(quantile_q(recent peaks) * margin, newest peak)

instead of its declared `mem_gib` (q and margin in the PlannerSettings block, default
0.95 and 1.2): a high quantile with head room, never below what the last run needed. A
record with an absurd figure (not a number, <= 0, above ABSURD_GIB) is left out with a
warning. `planflow plan` shows where each figure came from ("declared" or
"learned n=K").
"""

from __future__ import annotations

import logging
import math
import os
import resource
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from planflow.core.pipeline import Pipeline
from planflow.runtime.history import Observation, observations

GIB = 2**30
ABSURD_GIB = 16 * 1024.0  # 16 TiB for one component: a broken record, not a need
# Where a container sees its own memory cgroup (Docker mounts it there; v2 needs a
# private cgroup namespace, Docker's default on a cgroup v2 host).
CGROUP_PEAK_FILES = (
    Path("/sys/fs/cgroup/memory.peak"),
    Path("/sys/fs/cgroup/memory/memory.max_usage_in_bytes"),
)
log = logging.getLogger("planflow.memory")


@dataclass(frozen=True)
class MemoryFigure:
    """A step's memory for the plan, and where the figure came from."""

    gib: float
    source: str  # "declared" | "learned n=K (p95 x1.2)" | "learned n=K (last run)"


@dataclass(frozen=True)
class PeakMeasure:
    """A finished component's peak memory and how it was read."""

    gib: float
    how: str  # "cgroup memory.peak" | "cgroup memory.max_usage_in_bytes" | "peak RSS"


CGROUP_ENV = "PLANFLOW_MEMORY_CGROUP"  # "1": this process has a container of its own


def in_own_container() -> bool:
    """Set by the distributed executor on Docker and Kubernetes children: the memory
    cgroup this process sees is its own container's (a process-pool child may sit in a
    container shared with the whole machine, whose cgroup says nothing about it)."""
    return os.environ.get(CGROUP_ENV) == "1"


def measure_peak() -> PeakMeasure:
    """This process's peak memory so far: its container's cgroup peak when it runs in a
    container of its own, else the peak RSS of this process and its waited-for children."""
    if in_own_container():
        for path in CGROUP_PEAK_FILES:
            try:
                return PeakMeasure(int(path.read_text().strip()) / GIB, f"cgroup {path.name}")
            except (OSError, ValueError):
                continue
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    unit = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return PeakMeasure(max(own, children) * unit / GIB, "peak RSS")


def sane(component: str, peak: float | None) -> bool:
    """Whether a recorded peak is a usable figure; an absurd one is logged and left out."""
    if peak is None:
        return False
    if not (isinstance(peak, (int, float)) and math.isfinite(peak) and 0 < peak <= ABSURD_GIB):
        log.warning(
            "history of '%s': peak_mem_gib=%r is ignored (it must be a number in (0, %g] GiB); "
            "the record is left out of the learned memory",
            component,
            peak,
            ABSURD_GIB,
        )
        return False
    return True


def quantile(values: Iterable[float], q: float) -> float:
    """The nearest-rank q-quantile (q in (0, 1]): a figure some run really reached."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("quantile of no values")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def learned(declared: float, peaks: list[float], q: float = 0.95, margin: float = 1.2) -> MemoryFigure:
    """The memory to plan a step with: from `peaks` (newest first, already sane) when
    there are any, else the declaration.

        >>> learned(0.0625, [0.15, 0.14, 0.16], q=0.95, margin=1.2).gib
        0.192
    """
    if not peaks:
        return MemoryFigure(declared, "declared")
    high = quantile(peaks, q) * margin
    if peaks[0] > high:  # the newest run needed more than the quantile with its margin
        return MemoryFigure(peaks[0], f"learned n={len(peaks)} (last run)")
    return MemoryFigure(round(high, 6), f"learned n={len(peaks)} (p{q * 100:g} x{margin:g})")


def peaks_of(component: str, seen: Iterable[Observation], runs: int) -> list[float]:
    """The newest `runs` sane peak figures among `seen` (newest first)."""
    return [o.peak_mem_gib for o in seen if sane(component, o.peak_mem_gib)][:runs]  # type: ignore[misc]


def memory_figures(pipeline: Pipeline, runs: int, q: float = 0.95, margin: float = 1.2) -> dict[str, MemoryFigure]:
    """Per step, the memory to plan it with: learned from the newest `runs` measured
    runs of its component's current code version (on any pool), else declared."""
    figures = {}
    for name, step in pipeline.steps.items():
        seen = observations(step.component, max(1, runs) * 4)
        figures[name] = learned(float(step.spec.mem_gib), peaks_of(step.component.name, seen, runs), q, margin)
    return figures
