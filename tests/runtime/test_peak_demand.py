"""The plan's peak demand per pool (the planned-peak metric): one sweep in time order
gives what comparing every task with every other gave."""

from __future__ import annotations

import random
from types import SimpleNamespace

from planflow.runtime.reporting import peak_demand


def _plan(tasks: list[SimpleNamespace]) -> SimpleNamespace:
    return SimpleNamespace(plan=SimpleNamespace(tasks={f"t{i}": t for i, t in enumerate(tasks)}))


def _task(pool: str, start: float, finish: float, **demand: float) -> SimpleNamespace:
    return SimpleNamespace(pool=pool, start=start, finish=finish, demand=demand)


def _every_pair(tasks: list[SimpleNamespace]) -> dict[str, dict[str, float]]:
    """The definition: at each start, the demand of the tasks holding then ([start, finish))."""
    peaks: dict[str, dict[str, float]] = {}
    for t in tasks:
        for resource in t.demand:
            live = [u for u in tasks if u.pool == t.pool and u.start <= t.start < u.finish]
            total = sum(u.demand.get(resource, 0.0) for u in live)
            peaks.setdefault(t.pool, {})[resource] = max(peaks.get(t.pool, {}).get(resource, 0.0), total)
    return peaks


def test_a_task_finishing_as_another_starts_does_not_add_to_its_peak_and_an_empty_one_adds_nothing():
    tasks = [
        _task("cpu-pool", 0, 2, cpu=2, mem_gib=1),
        _task("cpu-pool", 2, 4, cpu=3),  # starts as the first finishes
        _task("cpu-pool", 3, 3, cpu=50),  # no length: holds nothing
        _task("cpu-pool", 1, 3, cpu=1, mem_gib=4),
        _task("gpu-pool", 0, 1, gpu=1),
    ]
    assert peak_demand(_plan(tasks)) == {"cpu-pool": {"cpu": 4, "mem_gib": 5}, "gpu-pool": {"gpu": 1}}
    assert peak_demand(_plan(tasks)) == _every_pair(tasks)


def test_the_sweep_agrees_with_every_pair_on_random_plans_with_ties():
    rng = random.Random(7)
    for _ in range(200):
        tasks = []
        for _ in range(rng.randint(1, 30)):
            start = rng.randint(0, 10) / 2  # halves: many equal starts and finishes
            resources = rng.sample(["cpu", "mem_gib", "gpu"], rng.randint(1, 3))
            demand = {r: rng.choice([0.0, 0.5, 1.0, 2.0]) for r in resources}
            tasks.append(_task(rng.choice(["a", "b"]), start, start + rng.randint(0, 6) / 2, **demand))
        swept, paired = peak_demand(_plan(tasks)), _every_pair(tasks)
        assert swept.keys() == paired.keys()
        for pool in swept:
            assert swept[pool].keys() == paired[pool].keys()
            for resource, peak in swept[pool].items():
                assert abs(peak - paired[pool][resource]) < 1e-9, (pool, resource, tasks)
