"""The dispatch benchmark's pipeline as a deployable flow, for the fleet benchmark.

A deployment's flow must be importable at module level; the pipeline's amount of work
per estimated second (the calibrated rate, times a scale that keeps a burst short) comes
from the environment the benchmark gives the flow runs (PLANFLOW_BENCH_RATE).
"""

from __future__ import annotations

import os

from planflow import to_flow

from bench.bench_dispatch import synthetic_pipeline

RATE_ENV = "PLANFLOW_BENCH_RATE"
DEFAULT_RATE = 20.0  # matrix products per estimated second (a 2-core machine does about 2x that)

pipeline = synthetic_pipeline(float(os.environ.get(RATE_ENV) or DEFAULT_RATE))
synthetic = to_flow(pipeline)
