"""The pipeline `planflow demo heal --scenario oom` runs: one component that needs more
memory than it declares. It ships with planflow (the demo must run in any project, and
the Docker pool's image must import it) but is not one of a project's pipelines."""

from __future__ import annotations

from planflow.core.component import component
from planflow.core.pipeline import Pipeline
from planflow.runtime.flow import to_flow

PAGE = 4096


@component(cpu=0.5, mem_gib=0.25, est_seconds=2.0, pools=["docker"])
def hungry(extra_mib: int = 300) -> int:
    """Hold `extra_mib` MiB (every page written, so it is resident); returns the bytes held."""
    held = bytearray(extra_mib * 2**20)
    for offset in range(0, len(held), PAGE):
        held[offset] = 1
    return len(held)


pipeline = Pipeline(
    "oom-demo", [hungry], description="planflow demo heal --scenario oom: a component that needs more than it declares"
)
oom_demo = to_flow(pipeline)


@component(cpu=0.5, mem_gib=0.25, est_seconds=2.0, pools=["local"])
def hungry_here(extra_mib: int = 300) -> int:
    """`hungry` on the process pool (no container: planflow's memory watchdog holds it to
    its limit, runtime/memory_watch.py)."""
    return hungry.fn(extra_mib)


process_pipeline = Pipeline(
    "oom-demo-process",
    [hungry_here],
    description="a component that needs more than it declares, on the process pool",
)
