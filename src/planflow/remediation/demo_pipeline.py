"""The pipeline `planflow demo heal` deploys: one component that keeps a core busy for a
few seconds, a stand-in for a training step. It ships with planflow (the demo must run in
any project) but is not one of a project's pipelines: nothing discovers it."""

from __future__ import annotations

import time

from planflow.core.component import component
from planflow.core.pipeline import Pipeline
from planflow.runtime.flow import to_flow


@component(cpu=1, mem_gib=0.25, est_seconds=3.0)
def busy_work(seconds: float = 3.0) -> float:
    """Spin on one core for `seconds`; returns the seconds spent."""
    start = time.perf_counter()
    spins = 0
    while time.perf_counter() - start < seconds:
        spins += 1
    return time.perf_counter() - start


pipeline = Pipeline(
    "heal-demo", [busy_work], description="planflow demo heal: one component busy on a core for a few seconds"
)
heal_demo = to_flow(pipeline)
