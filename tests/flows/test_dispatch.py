"""The dispatcher keeps every pool within capacity, whatever the actual durations."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from planflow.runtime.dispatch import Assignment, CapacityError, dispatch


def _layered_dag(rng: random.Random, layers: int = 5, width: int = 6):
    upstream, names, previous = {}, [], []
    for layer in range(layers):
        current = [f"s{layer}_{i}" for i in range(rng.randint(2, width))]
        for name in current:
            upstream[name] = tuple(rng.sample(previous, k=min(len(previous), rng.randint(0, 2))))
        names += current
        previous = current
    return upstream, names


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_capacity_holds_when_actual_durations_differ_from_estimates(seed):
    rng = random.Random(seed)
    upstream, names = _layered_dag(rng)
    capacity = {"small": {"cpu": 3.0, "gpu": 0.0, "mem_gib": 4.0}, "big": {"cpu": 4.0, "gpu": 1.0, "mem_gib": 8.0}}
    assignments = {}
    for i, name in enumerate(names):
        pool = rng.choice(["small", "big"])
        demand = {
            "cpu": rng.choice([0.5, 1, 2, 3]),
            "gpu": 1.0 if pool == "big" and rng.random() < 0.3 else 0.0,
            "mem_gib": rng.choice([0.5, 1, 2, 4]),
        }
        assignments[name] = Assignment(name, pool, demand, priority=i)
    # Actual durations deliberately unlike any estimate: 0-30 ms at random.
    actual = {name: rng.uniform(0.0, 0.03) for name in names}
    lock = threading.Lock()
    live = {"small": {"cpu": 0.0, "gpu": 0.0, "mem_gib": 0.0}, "big": {"cpu": 0.0, "gpu": 0.0, "mem_gib": 0.0}}
    violations, finished_order = [], []

    def work(name: str) -> str:
        a = assignments[name]
        with lock:
            for r, v in a.demand.items():
                live[a.pool][r] += v
                if live[a.pool][r] > capacity[a.pool][r] + 1e-9:
                    violations.append((name, r, live[a.pool][r]))
        time.sleep(actual[name])
        with lock:
            for r, v in a.demand.items():
                live[a.pool][r] -= v
            finished_order.append(name)
        return name

    with ThreadPoolExecutor(max_workers=16) as executor:

        def start(name, outputs):
            assert all(dep in outputs for dep in upstream[name]), f"{name} started before its inputs"
            return executor.submit(work, name)

        records, ledger = dispatch(upstream, assignments, capacity, start)

    assert violations == []
    assert all(r.state == "Completed" for r in records.values())
    for pool, peak in ledger.peak.items():
        assert all(peak[r] <= capacity[pool][r] + 1e-9 for r in peak)
    for name in names:
        for dep in upstream[name]:
            assert records[dep].finished <= records[name].started


def test_a_failure_stops_new_releases_and_skips_the_rest():
    upstream = {"a": (), "b": ("a",), "c": ("b",)}
    assignments = {n: Assignment(n, "p", {"cpu": 1}, i) for i, n in enumerate(upstream)}
    capacity = {"p": {"cpu": 1, "gpu": 0, "mem_gib": 1}}

    def boom(name):
        if name == "b":
            raise RuntimeError("b broke")
        return name

    with ThreadPoolExecutor(max_workers=2) as executor:
        records, _ = dispatch(upstream, assignments, capacity, lambda n, o: executor.submit(boom, n))
    assert [records[n].state for n in "abc"] == ["Completed", "Failed", "Skipped"]
    assert str(records["b"].error) == "b broke"


def test_a_demand_larger_than_the_pool_is_refused_before_anything_runs():
    assignments = {"huge": Assignment("huge", "p", {"cpu": 8, "mem_gib": 1}, 0)}
    with pytest.raises(CapacityError, match=r"step 'huge' can never run on pool 'p': cpu=8 > capacity 2"):
        dispatch({"huge": ()}, assignments, {"p": {"cpu": 2, "gpu": 0, "mem_gib": 4}}, lambda n, o: None)


def test_a_step_is_recorded_as_ending_when_it_ended_not_when_the_dispatcher_heard_of_it():
    # `quick` ends at once while the dispatcher is still busy releasing `slow_start`
    # (its start takes 1 s): the record, which the duration history learns from, must say
    # `quick` took milliseconds, not the dispatcher's 1 s of being busy
    capacity = {"p": {"cpu": 2.0, "gpu": 0.0, "mem_gib": 2.0}}
    demand = {"cpu": 1.0, "gpu": 0.0, "mem_gib": 1.0}
    assignments = {s: Assignment(s, "p", demand, priority=i) for i, s in enumerate(["quick", "slow_start"])}
    with ThreadPoolExecutor(max_workers=2) as executor:

        def start(step, outputs):
            if step == "slow_start":
                time.sleep(1.0)
            return executor.submit(lambda: step)

        records, _ = dispatch({"quick": (), "slow_start": ()}, assignments, capacity, start)
    quick = records["quick"]
    assert quick.state == "Completed" and records["slow_start"].state == "Completed"
    assert quick.finished - quick.started < 0.5, (quick.started, quick.finished)
