"""A pool whose capacity varies over time (a step function): what other runs hold."""

import pytest

from planflow.planner import (
    InfeasibleError,
    Mode,
    Plan,
    PlannedTask,
    PlannerOptions,
    Pool,
    Problem,
    Step,
    Task,
    plan_violations,
    solve,
)
from planflow.planner.bounds import lower_bounds, supplied_by
from planflow.planner.instance import compile_problem

FAST = PlannerOptions(time_limit_s=3)


def check(problem, plan):
    assert plan_violations(problem, plan) == []
    assert plan.makespan >= plan.lower_bound - 1e-9
    return plan


def test_a_task_waits_until_the_pool_has_room():
    pool = Pool("p", {"cpu": 2}, steps=(Step(0, 30, {"cpu": 1}),))
    prob = Problem((Task("big", (Mode("p", 10, {"cpu": 2}),)), Task("small", (Mode("p", 5, {"cpu": 1}),))), (pool,))
    plan = check(prob, solve(prob, FAST))
    assert plan["big"].start == 30 and plan["small"].start == 0
    assert plan.makespan == 40 and plan.status == "optimal"


def test_a_gap_between_two_steps_is_used():
    pool = Pool("p", {"cpu": 2}, steps=(Step(0, 10, {"cpu": 0}), Step(20, 50, {"cpu": 0})))
    prob = Problem(
        (Task("a", (Mode("p", 10, {"cpu": 2}),)), Task("b", (Mode("p", 5, {"cpu": 2}),), after=("a",))), (pool,)
    )
    plan = check(prob, solve(prob, FAST))
    assert (plan["a"].start, plan["b"].start) == (10, 50)


def test_busy_pool_sends_work_to_the_free_one():
    pools = (Pool("busy", {"cpu": 4}, steps=(Step(0, 100, {"cpu": 0}),)), Pool("slow", {"cpu": 4}))
    prob = Problem((Task("x", (Mode("busy", 10, {"cpu": 2}), Mode("slow", 40, {"cpu": 2}))),), pools)
    plan = check(prob, solve(prob, FAST))
    assert plan["x"].pool == "slow" and plan.makespan == 40


def test_milp_respects_steps():
    """Non-integer step boundaries and several tasks: whatever the MILP finds holds."""
    pool = Pool("p", {"cpu": 3}, steps=(Step(0.5, 7.25, {"cpu": 1}), Step(9, 12, {"cpu": 2})))
    tasks = tuple(Task(f"t{i}", (Mode("p", 1.5 + i % 3, {"cpu": 1 + i % 2}),)) for i in range(8))
    prob = Problem(tasks, (pool,))
    # exact_max_tasks=0: the MILP, not the branch and bound, has to handle the steps
    plan = check(prob, solve(prob, PlannerOptions(time_limit_s=3, heuristic_share=0.01, exact_max_tasks=0)))
    assert plan.makespan <= plan.heuristic_makespan + 1e-9


def test_energy_bound_counts_what_the_steps_take():
    assert supplied_by(20, 2, [(0, 10, 2)]) == 20  # nothing for 10 s, then 2 per second
    assert supplied_by(20, 2, []) == 10
    pool = Pool("p", {"cpu": 2}, steps=(Step(0, 10, {"cpu": 0}),))
    prob = Problem((Task("a", (Mode("p", 10, {"cpu": 2}),)),), (pool,))
    assert lower_bounds(compile_problem(prob))["resource"] == 20


def test_steps_on_the_grid_keep_integrality_and_off_grid_do_not():
    base = Task("a", (Mode("p", 4, {"cpu": 1}),))
    assert compile_problem(Problem((base,), (Pool("p", {"cpu": 1}, steps=(Step(0, 8, {"cpu": 0}),)),))).integral
    assert not compile_problem(Problem((base,), (Pool("p", {"cpu": 1}, steps=(Step(0, 2.5, {"cpu": 0}),)),))).integral


@pytest.mark.parametrize(
    ("steps", "needle"),
    [
        ((Step(5, 5, {"cpu": 1}),), "empty or starts before 0"),
        ((Step(0, 10, {"cpu": 3}),), "outside [0, the pool's capacity"),
        ((Step(0, 10, {"cpu": 1}), Step(5, 20, {"cpu": 0})), "overlaps the step ending at 10"),
    ],
    ids=["empty", "above-capacity", "overlap"],
)
def test_bad_steps_are_named(steps, needle):
    prob = Problem((Task("a", (Mode("p", 1, {"cpu": 1}),)),), (Pool("p", {"cpu": 2}, steps=steps),))
    with pytest.raises(InfeasibleError, match="pool 'p' step") as err:
        solve(prob, FAST)
    assert needle in str(err.value)


def test_violations_checker_sees_a_step():
    pool = Pool("p", {"cpu": 2}, steps=(Step(0, 10, {"cpu": 1}),))
    prob = Problem((Task("a", (Mode("p", 5, {"cpu": 2}),)),), (pool,))
    bad = Plan({"a": PlannedTask("a", "p", 0, 0.0, 5.0, 5.0, {"cpu": 2})}, 5, 5, {}, 0, "heuristic", "x", 0, 5, 0)
    assert "over capacity at t=0" in plan_violations(prob, bad)[0]
