"""Random layered pipelines for scale benchmarks and tests (deterministic per seed).

Example::

    >>> p = random_pipeline(100, seed=1)
    >>> len(p.tasks), [pool.name for pool in p.pools]
    (100, ['cpu', 'gpu'])
"""

from __future__ import annotations

import math
import random

from .problem import Mode, Pool, Problem, Task


def random_pipeline(n: int, seed: int = 0, gpu_share: float = 0.3) -> Problem:
    """``n`` components in ~sqrt(n) layers; each depends on 1-3 tasks of earlier layers.

    Every task has a CPU-pool mode; ``gpu_share`` of them also a 3x faster GPU-pool mode.
    Durations are non-integer seconds (e.g. 37.4) like real estimates.
    """
    rng = random.Random(seed)
    layers = max(1, int(math.sqrt(n)))
    layer_of = sorted(rng.randrange(layers) for _ in range(n))
    layer_of[0] = 0
    names = [f"c{i:04d}" for i in range(n)]
    by_layer: dict[int, list[int]] = {}
    for i, lay in enumerate(layer_of):
        by_layer.setdefault(lay, []).append(i)
    tasks = []
    for i in range(n):
        lay = layer_of[i]
        earlier = [j for l2 in range(max(0, lay - 2), lay) for j in by_layer.get(l2, [])]
        after = tuple(names[j] for j in sorted(set(rng.sample(earlier, min(len(earlier), rng.randint(1, 3))))))
        d = round(rng.uniform(1.0, 60.0), 1)
        cpu, mem = rng.randint(1, 8), rng.choice([1, 2, 4, 8, 16])
        modes = [Mode("cpu", d, {"cpu": cpu, "mem_gib": mem})]
        if rng.random() < gpu_share:
            modes.append(Mode("gpu", round(d / 3, 1), {"cpu": min(cpu, 2), "gpu": 1, "mem_gib": mem}))
        tasks.append(Task(names[i], tuple(modes), after))
    pools = (
        Pool("cpu", {"cpu": 32, "mem_gib": 64}, cost_per_hour=1.0),
        Pool("gpu", {"cpu": 8, "gpu": 2, "mem_gib": 64}, cost_per_hour=4.0),
    )
    return Problem(tuple(tasks), pools)
