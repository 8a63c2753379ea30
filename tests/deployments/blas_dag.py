"""A one-step pipeline for the distributed thread-limit test: its module imports in the
child flow run (from the repository root, as the process worker runs it)."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info

from planflow.core.component import component
from planflow.core.pipeline import Pipeline


class BlasThreads:
    """How many BLAS threads the step's process had while the step ran."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def key_metrics(self) -> dict[str, float]:
        return {"blas_threads": self.threads}


@component(cpu=1, mem_gib=0.25, est_seconds=0.5)
def blas_threads(n: int = 200) -> BlasThreads:
    a = np.ones((n, n))
    a @ a
    return BlasThreads(max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"))


blas_one = Pipeline("toy-blas-one", [blas_threads], description="a cpu=1 step reporting its BLAS threads")
