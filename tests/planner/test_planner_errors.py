"""Error messages: what failed, the offending values, and the fix."""

import pytest

from planflow.planner import CycleError, InfeasibleError, Mode, PlanningError, Pool, Problem, Task, solve

POOLS = (Pool("cpu", {"cpu": 8, "gpu": 0, "mem_gib": 16}), Pool("gpu", {"cpu": 4, "gpu": 1, "mem_gib": 32}))


def test_cycle_message():
    prob = Problem(
        (
            Task("a", (Mode("cpu", 1, {"cpu": 1}),), after=("c",)),
            Task("b", (Mode("cpu", 1, {"cpu": 1}),), after=("a",)),
            Task("c", (Mode("cpu", 1, {"cpu": 1}),), after=("b",)),
        ),
        POOLS,
    )
    with pytest.raises(CycleError) as e:
        solve(prob)
    assert isinstance(e.value, PlanningError)
    assert str(e.value) == (
        "dependency cycle: a -> b -> c -> a (x -> y means y lists x in its `after`), so no task "
        "of the cycle can start first. Fix: remove one of these `after` entries, e.g. drop 'c' "
        "from the `after` of 'a'."
    )
    assert e.value.cycle == ["a", "b", "c", "a"]


def test_task_fits_no_pool_full_message():
    prob = Problem(
        (
            Task("train", (Mode("cpu", 10, {"cpu": 12, "mem_gib": 4}),)),
            Task("ok", (Mode("cpu", 1, {"cpu": 1}),)),
            Task("big", (Mode("cpu", 5, {"cpu": 2, "mem_gib": 20}), Mode("gpu", 2, {"gpu": 2}))),
        ),
        POOLS,
    )
    with pytest.raises(InfeasibleError) as e:
        solve(prob)
    caps = "cpu={cpu: 8, gpu: 0, mem_gib: 16}, gpu={cpu: 4, gpu: 1, mem_gib: 32}"
    assert str(e.value) == (
        "2 problems make the plan infeasible:\n"
        "- task 'train' fits no pool: mode 0 on pool 'cpu' demands {cpu: 12, mem_gib: 4} "
        f"(cpu 12 > 8). Pool capacities: {caps}. "
        "Fix: lower its cpu to <= 8, or add a pool with cpu >= 12 and mem_gib >= 4.\n"
        "- task 'big' fits no pool: mode 0 on pool 'cpu' demands {cpu: 2, mem_gib: 20} "
        "(mem_gib 20 > 16); mode 1 on pool 'gpu' demands {gpu: 2} (gpu 2 > 1). "
        f"Pool capacities: {caps}. Fix: lower mode 0's mem_gib to <= 16 or lower mode 1's "
        "gpu to <= 1, or add a pool with cpu >= 2 and mem_gib >= 20 or gpu >= 2."
    )
    assert len(e.value.problems) == 2


def test_unknown_names_and_negative_values():
    prob = Problem(
        (
            Task("prepare", (Mode("cpu", 1, {"cpu": 1}),)),
            Task("train", (Mode("gpus", 1, {"gpu": 1}),), after=("prepar",)),
            Task("neg", (Mode("cpu", -1, {"cpu": -2}),)),
        ),
        POOLS,
    )
    with pytest.raises(InfeasibleError) as e:
        solve(prob)
    msg = str(e.value)
    assert "task 'train' mode 0 names unknown pool 'gpus'; did you mean 'gpu'?" in msg
    assert "task 'train' is after unknown task 'prepar'; did you mean 'prepare'?" in msg
    assert "task 'neg' mode 0 has negative duration -1; use >= 0" in msg
    assert "task 'neg' mode 0 has negative demand {cpu: -2}; use >= 0" in msg


def test_nonrenewable_budget_no_combination():
    pool = Pool("R", {"R1": 1})
    modes = (Mode("R", 1, {"R1": 1}, {"N1": 5}), Mode("R", 2, {"R1": 1}, {"N2": 5}))
    prob = Problem(tuple(Task(f"t{i}", modes) for i in range(3)), (pool,), nonrenewable_capacity={"N1": 5, "N2": 5})
    with pytest.raises(InfeasibleError) as e:
        solve(prob)
    assert str(e.value) == (
        "no combination of modes satisfies the non-renewable budgets (N1=5, N2=5): each budget "
        "alone can be met (thriftiest totals N1>=0, N2>=0) but not all at once. Fix: raise a "
        "budget or give tasks modes that use less of these resources."
    )


def test_nonrenewable_budget_too_small():
    pool = Pool("R", {"R1": 1})
    prob = Problem((Task("t", (Mode("R", 1, {"R1": 1}, {"N1": 7}),)),), (pool,), nonrenewable_capacity={"N1": 5})
    with pytest.raises(InfeasibleError, match=r"'N1'.*needs 7 but the budget is 5.*>= 7"):
        solve(prob)
