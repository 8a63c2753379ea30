"""Small instances with known optima, multi-pool choices, cost, plan round trip."""

import json
import subprocess
import sys

import pytest

from planflow.planner import Mode, Plan, PlannerOptions, Pool, Problem, Task, plan_violations, solve
from planflow.planner.generate import random_pipeline

FAST = PlannerOptions(time_limit_s=5)


def check(problem, plan):
    assert plan_violations(problem, plan) == []
    assert plan.makespan >= plan.lower_bound - 1e-9
    assert plan.makespan <= plan.heuristic_makespan + 1e-9  # never worse than the baseline
    return plan


def test_serial_on_one_pool():
    pool = Pool("p", {"cpu": 2})
    tasks = tuple(Task(n, (Mode("p", d, {"cpu": 2}),)) for n, d in (("a", 1), ("b", 2), ("c", 3)))
    prob = Problem(tasks, (pool,))
    plan = check(prob, solve(prob, FAST))
    assert plan.makespan == 6 and plan.status == "optimal" and plan.gap == 0


def test_precedence_and_parallelism():
    pool = Pool("p", {"cpu": 4})
    prob = Problem(
        (
            Task("a", (Mode("p", 2, {"cpu": 2}),)),
            Task("b", (Mode("p", 3, {"cpu": 2}),)),
            Task("c", (Mode("p", 1, {"cpu": 4}),), after=("a", "b")),
        ),
        (pool,),
    )
    plan = check(prob, solve(prob, FAST))
    assert plan.makespan == 4
    assert plan["c"].start == 3 and plan.order()[-1] == "c"


def test_optimum_needs_second_pool():
    # Each pool fits one job at a time; putting both on 'a' would take 10.
    pools = (Pool("a", {"cpu": 1}), Pool("b", {"cpu": 1}))
    modes = (Mode("a", 5, {"cpu": 1}), Mode("b", 5, {"cpu": 1}))
    prob = Problem((Task("x", modes), Task("y", modes)), pools)
    plan = check(prob, solve(prob, FAST))
    assert plan.makespan == 5
    assert {plan["x"].pool, plan["y"].pool} == {"a", "b"}


def test_optimum_needs_second_pool_mip():
    """A greedy earliest-finish choice puts the first task on the faster pool; the optimum
    sends the long task to the slow pool.  Found by the MILP (status optimal)."""
    pools = (Pool("fast", {"cpu": 1}), Pool("slow", {"cpu": 1}))
    prob = Problem(
        (
            Task("short", (Mode("fast", 2, {"cpu": 1}), Mode("slow", 3, {"cpu": 1}))),
            Task("long", (Mode("fast", 6, {"cpu": 1}), Mode("slow", 7, {"cpu": 1}))),
            Task("mid", (Mode("fast", 4, {"cpu": 1}), Mode("slow", 5, {"cpu": 1}))),
        ),
        pools,
    )
    plan = check(prob, solve(prob, FAST))
    # optimum: fast runs short+mid (2+4=6) and long on slow (7) -> 7; or long on fast (6),
    # short+mid on slow (3+5=8) -> 8.  Best is 7.
    assert plan.makespan == 7 and plan.status == "optimal"
    assert plan["long"].pool == "slow"


def test_gpu_pool_faster():
    cpu = Pool("cpu", {"cpu": 8, "mem_gib": 16}, cost_per_hour=1.0)
    gpu = Pool("gpu", {"cpu": 4, "gpu": 1, "mem_gib": 32}, cost_per_hour=3.0)
    prep = Task("prep", (Mode("cpu", 30, {"cpu": 4}),))
    train = Task("train", (Mode("cpu", 600, {"cpu": 8}), Mode("gpu", 120, {"cpu": 2, "gpu": 1})), after=("prep",))
    prob = Problem((prep, train), (cpu, gpu))
    plan = check(prob, solve(prob, FAST))
    assert plan["train"].pool == "gpu" and plan["train"].mode == 1
    assert plan.makespan == 150 and plan.status == "optimal"
    assert plan.cost == pytest.approx(30 * 1.0 / 3600 + 120 * 3.0 / 3600)


def test_cost_breaks_ties():
    pools = (Pool("dear", {"cpu": 4}, cost_per_hour=10.0), Pool("cheap", {"cpu": 4}, cost_per_hour=1.0))
    prob = Problem((Task("a", (Mode("dear", 60, {"cpu": 1}), Mode("cheap", 60, {"cpu": 1}))),), pools)
    plan = check(prob, solve(prob, FAST))
    assert plan["a"].pool == "cheap" and plan.cost == pytest.approx(60 / 3600)


@pytest.mark.parametrize("exact_max_tasks", [15, 0], ids=["branch-and-bound", "milp-only"])
def test_non_integer_durations_exact_capacity(exact_max_tasks):
    pool = Pool("p", {"cpu": 3, "mem_gib": 8})
    tasks = (
        Task("a", (Mode("p", 3.7, {"cpu": 2, "mem_gib": 4}),)),
        Task("b", (Mode("p", 2.2, {"cpu": 2}),)),
        Task("c", (Mode("p", 1.35, {"cpu": 1, "mem_gib": 4}),), after=("b",)),
        Task("d", (Mode("p", 0.0, {}),), after=("a", "c")),
    )
    prob = Problem(tasks, (pool,))
    plan = check(prob, solve(prob, PlannerOptions(time_limit_s=5, exact_max_tasks=exact_max_tasks)))
    # a and b cannot overlap (cpu 4 > 3): best is b, then a || c
    assert plan.makespan == pytest.approx(2.2 + 3.7)
    if exact_max_tasks:  # the branch and bound works in real time: a proof
        assert (plan.status, plan.solver, plan.gap, plan.lower_bound) == ("optimal", "exact", 0.0, plan.makespan)
        return
    # Non-integer durations: the MILP works on a rounded-up grid, so it cannot prove
    # optimality; the bound is max(critical path, energy) only.
    assert plan.status in ("heuristic", "feasible") and 0 < plan.lower_bound < plan.makespan


def test_random_pipeline_valid_and_fast():
    prob = random_pipeline(300, seed=3)
    plan = check(prob, solve(prob, PlannerOptions(time_limit_s=2)))
    assert plan.solve_seconds < 4
    assert plan.status in ("heuristic", "feasible", "optimal")


def test_time_limit_too_short_falls_back_to_heuristic(psplib):
    from planflow.planner.psplib import read_psplib

    prob = read_psplib(psplib / "j30" / "j3013_6.sm")  # hard: heuristics stay above the bound
    plan = solve(prob, PlannerOptions(time_limit_s=0.01))
    assert plan.status == "heuristic" and plan.solver == "heuristic"
    assert plan_violations(prob, plan) == []
    assert plan.gap > 0 and plan.makespan == plan.heuristic_makespan


def test_cbc_solver_option():
    pools = (Pool("a", {"cpu": 1}), Pool("b", {"cpu": 1}))
    modes = (Mode("a", 5, {"cpu": 1}), Mode("b", 6, {"cpu": 1}))
    prob = Problem((Task("x", modes), Task("y", modes), Task("z", modes)), pools)
    # exact_max_tasks=0: no branch and bound, so the MILP is what proves it
    plan = check(prob, solve(prob, PlannerOptions(solver="cbc", time_limit_s=10, exact_max_tasks=0)))
    # a: x, z (5 + 5), b: y (6) -> 10; CBC proves nothing shorter exists
    assert plan.makespan == 10 and plan.status == "optimal" and plan.solver == "cbc"


def test_plan_round_trip():
    prob = random_pipeline(20, seed=2)
    plan = solve(prob, PlannerOptions(time_limit_s=2))
    d = json.loads(json.dumps(plan.to_dict()))
    back = Plan.from_dict(d)
    assert back == plan
    assert back.order() == plan.order()
    assert back["c0000"].start == plan.tasks["c0000"].start


def test_validator_catches_violations():
    pool = Pool("p", {"cpu": 2})
    prob = Problem((Task("a", (Mode("p", 2, {"cpu": 2}),)), Task("b", (Mode("p", 2, {"cpu": 1}),))), (pool,))
    plan = solve(prob, FAST)
    d = plan.to_dict()
    for t in d["tasks"]:  # force both to start at 0: cpu 3 > 2
        t["finish"] -= t["start"]
        t["start"] = 0.0
    d["makespan"] = 2.0
    bad = plan_violations(prob, Plan.from_dict(d))
    assert bad and "over capacity" in bad[0]


def test_planner_never_imports_prefect():
    code = (
        "import sys, planflow.planner, planflow.planner.psplib, planflow.planner.generate; "
        "print('prefect' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_highs_unavailable_falls_back_to_cbc(monkeypatch):
    import pulp

    monkeypatch.setattr(pulp.HiGHS, "available", lambda self: False)
    pools = (Pool("a", {"cpu": 1}), Pool("b", {"cpu": 1}))
    modes = (Mode("a", 5, {"cpu": 1}), Mode("b", 6, {"cpu": 1}))
    prob = Problem((Task("x", modes), Task("y", modes), Task("z", modes)), pools)
    plan = check(prob, solve(prob, PlannerOptions(solver="highs", time_limit_s=10, exact_max_tasks=0)))
    assert plan.solver == "cbc" and plan.status == "optimal"
    assert any("fell back to CBC" in n for n in plan.notes)


def test_doctests():
    import doctest

    import planflow.planner.generate
    import planflow.planner.problem

    for mod in (planflow.planner.problem, planflow.planner.generate):
        assert doctest.testmod(mod).failed == 0


def test_planning_stops_once_the_gap_is_within_mip_gap():
    problem = random_pipeline(300, seed=0)  # non-integer durations: no proof, a gap remains
    plan = solve(problem, PlannerOptions(time_limit_s=20, mip_gap=0.05))
    assert plan.gap <= 0.05
    assert plan.status == "optimal" or any("within mip_gap=5.00%" in n for n in plan.notes)
    assert plan_violations(problem, plan) == []
