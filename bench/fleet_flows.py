"""The fleet benchmark's pipelines as deployable flows.

A deployment's flow must be importable at module level; what each run's work amounts to
comes from the environment the benchmark gives the flow runs.

- `synthetic`: the dispatch benchmark's pipeline (matrix products per estimated second:
  the calibrated rate, times a scale that keeps a burst short; PLANFLOW_BENCH_RATE).
- The honest workloads (`*_honest`, the default of `python -m bench.bench_fleet`): the
  three examples and the dispatch benchmark's pipeline with their own graphs, names and
  declarations, each component's body replaced by CPU-bound work that keeps exactly its
  declared cores busy: `cpu` threads, each burning `est_seconds x PLANFLOW_BENCH_SCALE`
  seconds of its own CPU time (`burn`). Measured (bench/fleet_honesty.py), the
  examples' real steps use a fraction of what they declare (they wait on I/O, Python and
  Prefect as much as they compute), so running more of them than the pool has cores
  overlaps the waits and "wins" by ignoring the declarations; with `burn` the work is
  what was declared, and oversubscribing a pool only stretches it.
"""

from __future__ import annotations

import os
import threading
import time

from planflow import to_flow
from planflow.core.component import component
from planflow.core.pipeline import Pipeline, Step

from bench.bench_dispatch import POOL, synthetic_pipeline

RATE_ENV = "PLANFLOW_BENCH_RATE"
SCALE_ENV = "PLANFLOW_BENCH_SCALE"
DEFAULT_RATE = 20.0  # matrix products per estimated second (a 2-core machine does about 2x that)
DEFAULT_SCALE = 0.5  # CPU seconds per declared estimated second, per declared core


def burn(seconds: float = 0.0, threads: int = 1) -> float:
    """CPU-bound work: `threads` threads, each until it used `seconds` of its own CPU time
    (single-threaded 256x256 matrix products; numpy drops the GIL while it multiplies).
    A loaded machine stretches the wall time, never shortens the work."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    totals: list[float] = []

    def one(seed: int) -> None:
        a = np.random.default_rng(seed).random((256, 256))
        started = time.thread_time()
        while time.thread_time() - started < seconds:
            a = (a @ a) / 256.0
        totals.append(float(a.sum()))

    with threadpool_limits(1):
        workers = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(max(1, threads))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    return sum(totals)


def honest(real: Pipeline, scale: float) -> Pipeline:
    """`real`'s graph, names and declarations, each body replaced by `burn` of its
    declared cores for est_seconds x `scale` of CPU time each."""
    steps = []
    for name in real.topological_order():
        spec = real.steps[name].spec
        demand = spec.demand()
        comp = component(
            burn,
            name=name,
            cpu=demand.get("cpu", 1),
            mem_gib=demand.get("mem_gib", 0.0),
            est_seconds=spec.est_seconds,
            pools=[POOL],
        )
        cores = max(1, round(demand.get("cpu", 1)))
        params = {"seconds": round(spec.est_seconds * scale, 3), "threads": cores}
        steps.append(Step(name, comp, after=real.upstream(name), params=params))
    return Pipeline(real.name, steps, description=f"{real.name}, each component CPU-bound work as declared")


def _real() -> dict[str, Pipeline]:
    from flows.fraud_risk.flow import pipeline as fraud_risk
    from flows.image_classification.flow import pipeline as image_classification
    from flows.predictive_maintenance.flow import pipeline as predictive_maintenance

    return {
        "fraud_risk": fraud_risk,
        "synthetic": synthetic_pipeline(1.0),
        "image_classification": image_classification,
        "predictive_maintenance": predictive_maintenance,
    }


_scale = float(os.environ.get(SCALE_ENV) or DEFAULT_SCALE)
pipeline = synthetic_pipeline(float(os.environ.get(RATE_ENV) or DEFAULT_RATE))
synthetic = to_flow(pipeline)
_honest = {name: honest(real, _scale) for name, real in _real().items()}
fraud_risk_honest = to_flow(_honest["fraud_risk"])
synthetic_honest = to_flow(_honest["synthetic"])
image_classification_honest = to_flow(_honest["image_classification"])
predictive_maintenance_honest = to_flow(_honest["predictive_maintenance"])
