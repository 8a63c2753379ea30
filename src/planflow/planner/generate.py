"""Random layered pipelines for scale benchmarks and tests (deterministic per seed).

Example::

    >>> p = random_pipeline(100, seed=1)
    >>> len(p.tasks), [pool.name for pool in p.pools]
    (100, ['cpu', 'gpu'])
"""

from __future__ import annotations

import math
import random

from .problem import Mode, Pool, Problem, Step, Task


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


def random_small(n: int, seed: int = 0, integral: bool = False, steps: bool = True, arc_share: float = 0.2) -> Problem:
    """A small, tightly packed pipeline for exactness tests and benchmarks: ``n`` tasks on
    three pools (cpu, gpu, mem capacities), each task allowed on one to three of them,
    random precedence (each earlier task is a predecessor with probability ``arc_share``),
    real-valued durations (``integral``: whole seconds) and, with ``steps``, capacity steps
    (other runs holding part of a pool for a while)."""
    rng = random.Random(seed)
    pools = [
        Pool("cpu", {"cpu": 8, "mem_gib": 16}, cost_per_hour=1.0),
        Pool("gpu", {"cpu": 4, "gpu": 1, "mem_gib": 32}, cost_per_hour=3.0),
        Pool("big", {"cpu": 16, "mem_gib": 64}, cost_per_hour=2.0),
    ]
    if steps:
        for i, p in enumerate(pools):
            if rng.random() < 0.5:
                a = round(rng.uniform(0, 40), 0 if integral else 2)
                b = a + round(rng.uniform(5, 40), 0 if integral else 2)
                left = {r: float(math.floor(c * rng.choice([0.0, 0.25, 0.5]))) for r, c in p.capacity.items()}
                pools[i] = Pool(p.name, p.capacity, p.cost_per_hour, steps=(Step(a, b, left),))
    names = [f"t{i:02d}" for i in range(n)]
    tasks = []
    for i in range(n):
        after = tuple(names[j] for j in range(i) if rng.random() < arc_share)
        base = rng.uniform(1.0, 60.0)
        cpu, mem = rng.randint(2, 6), rng.choice([2, 4, 8, 12])
        modes = []
        allowed = [p for p in ("cpu", "gpu", "big") if rng.random() < 0.5] or [rng.choice(("cpu", "big"))]
        for pool in allowed:
            factor = {"cpu": 1.0, "gpu": 0.4, "big": 0.8}[pool]
            d = base * factor * rng.uniform(0.9, 1.1)
            d = float(max(1, round(d))) if integral else round(d, 3)
            dem = {"cpu": min(cpu, 4) if pool == "gpu" else cpu * (2 if pool == "big" else 1), "mem_gib": mem}
            if pool == "gpu":
                dem["gpu"] = 1
            modes.append(Mode(pool, d, dem))
        tasks.append(Task(names[i], tuple(modes), after))
    return Problem(tuple(tasks), tuple(pools))


def six_components() -> Problem:
    """Predictive maintenance plus a side step on one local pool of 2 CPUs with learned
    (real-valued) durations: the shape that got "gap 27.6 %, heuristic" before the branch
    and bound (issue 14). Its optimum is 38.82 s: anomaly_model holds both CPUs, so it
    cannot overlap rul_model."""
    local = Pool("local", {"cpu": 2, "gpu": 0, "mem_gib": 7.6})

    def step(name: str, seconds: float, cpu: float, mem: float, after: tuple[str, ...] = ()) -> Task:
        return Task(name, (Mode("local", seconds, {"cpu": cpu, "mem_gib": mem}),), after)

    return Problem(
        (
            step("sensor_readings", 2.37, 1, 1.0),
            step("sensor_features", 5.81, 1, 2.0, ("sensor_readings",)),
            step("anomaly_model", 11.42, 2, 3.0, ("sensor_features",)),
            step("rul_model", 17.93, 1, 4.0, ("sensor_features",)),
            step("report_stats", 3.16, 1, 0.5, ("sensor_readings",)),
            step("maintenance_plan", 1.29, 1, 1.0, ("anomaly_model", "rul_model")),
        ),
        (local,),
    )
