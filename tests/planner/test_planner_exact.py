"""Small plans proven optimal: the branch and bound (planner/exact.py) against a brute
force, against the MILP where the MILP proves, with capacity steps, and through solve()."""

import functools
import itertools
import time

import pytest

from planflow.planner import (
    Mode,
    Plan,
    PlannedTask,
    PlannerOptions,
    Pool,
    Problem,
    Step,
    Task,
    engine,
    plan_violations,
    solve,
)
from planflow.planner.exact import branch_and_bound
from planflow.planner.generate import random_small, six_components
from planflow.planner.heuristics import Schedule, serial_sgs
from planflow.planner.instance import Instance, compile_problem

FAST = PlannerOptions(time_limit_s=5)


def as_plan(inst: Instance, s: Schedule) -> Plan:
    """A bare Plan of a schedule, for the independent checker plan_violations."""
    tasks = {}
    for j, name in enumerate(inst.names):
        m = inst.modes[j][s.mode[j]]
        um = inst.problem.tasks[j].modes[m.orig]
        tasks[name] = PlannedTask(name, um.pool, m.orig, s.start[j], s.start[j] + m.dur, m.dur, dict(um.demand))
    return Plan(tasks, s.makespan, 0.0, {}, 0.0, "heuristic", "heuristic", 0.0, s.makespan, 0.0)


def brute_force(inst: Instance) -> float:
    """Shortest makespan over every precedence-feasible order and every mode choice (the
    serial SGS of each: it builds every active schedule, and one of them is optimal)."""

    def orders(prefix: list[int], used: int):
        if len(prefix) == inst.n:
            yield prefix
        for j in range(inst.n):
            if not used >> j & 1 and all(used >> p & 1 for p in inst.preds[j]):
                yield from orders([*prefix, j], used | 1 << j)

    choices = list(itertools.product(*[range(len(ms)) for ms in inst.modes]))
    return min(serial_sgs(inst, order, list(modes)).makespan for order in orders([], 0) for modes in choices)


def weak_incumbent(inst: Instance) -> Schedule:
    """One SGS pass in topological order, last modes: the search has to find better itself."""
    return serial_sgs(inst, inst.topo, [len(ms) - 1 for ms in inst.modes])


@pytest.mark.parametrize("seed", range(16))
def test_branch_and_bound_matches_brute_force(seed):
    problem = random_small(3 + seed % 4, seed=seed)  # 3-6 tasks, three pools, steps on some
    inst = compile_problem(problem)
    start = weak_incumbent(inst)
    r = branch_and_bound(inst, start, lower_bound=0.0, deadline=time.perf_counter() + 30)
    assert r.proven
    assert plan_violations(problem, as_plan(inst, r.best)) == []
    assert r.best.makespan == pytest.approx(brute_force(inst), rel=1e-9)
    plan = solve(problem, FAST)
    assert plan_violations(problem, plan) == []
    assert plan.makespan == pytest.approx(r.best.makespan, rel=1e-9)
    assert (plan.status, plan.gap, plan.lower_bound) == ("optimal", 0.0, plan.makespan)


@pytest.mark.parametrize("seed", [0, 1, 3, 4, 5])  # seed 2: the MILP proves nothing in 5 s
def test_agrees_with_the_milp_where_the_milp_proves(seed):
    # Whole-second durations and steps: the MILP's grid is exact, so its "optimal" is a proof.
    problem = random_small(6 + seed % 3, seed=100 + seed, integral=True)
    exact = solve(problem, FAST)
    milp = solve(problem, PlannerOptions(time_limit_s=5, exact_max_tasks=0))
    for plan in (exact, milp):
        assert plan_violations(problem, plan) == []
    assert exact.status == "optimal"
    if milp.status == "optimal":
        assert exact.makespan == pytest.approx(milp.makespan, rel=1e-9)
    else:  # unproven: the exact plan is never worse
        assert exact.makespan <= milp.makespan + 1e-9


@pytest.mark.parametrize("mip_gap", [0.0, 0.05], ids=["gap0", "gap5pct"])
def test_six_component_real_valued_pipeline_is_proven(mip_gap):
    problem = six_components()
    plan = solve(problem, PlannerOptions(time_limit_s=10, mip_gap=mip_gap))
    assert plan_violations(problem, plan) == []
    # anomaly_model holds both CPUs, so it cannot overlap rul_model: 2.37 + 5.81 + 11.42 + 17.93 + 1.29
    assert plan.makespan == pytest.approx(38.82)
    assert (plan.status, plan.solver, plan.gap, plan.lower_bound) == ("optimal", "exact", 0.0, plan.makespan)
    assert plan.bounds["exact"] == plan.makespan


def test_capacity_steps_are_respected_and_used():
    # The pool is fully held on [4.5, 20.25) and half held on [30, 40): a fits before the
    # first step only if it starts at once, b (9.75 s) only in the gap between the steps.
    pool = Pool("p", {"cpu": 4}, steps=(Step(4.5, 20.25, {"cpu": 0}), Step(30, 40, {"cpu": 2})))
    tasks = (
        Task("a", (Mode("p", 3.5, {"cpu": 4}),)),
        Task("b", (Mode("p", 9.75, {"cpu": 3}),)),
        Task("c", (Mode("p", 6.0, {"cpu": 2}),), after=("a",)),
        Task("d", (Mode("p", 2.0, {"cpu": 2}),), after=("b",)),
    )
    problem = Problem(tasks, (pool,))
    plan = solve(problem, FAST)
    assert plan_violations(problem, plan) == []
    # a [0, 3.5); b [20.25, 30); c and d need 2 CPUs each and only 2 are free on [30, 40):
    # one after the other, 30 + 6 + 2.
    assert plan["a"].start == 0 and plan["b"].start == pytest.approx(20.25)
    assert (plan.status, plan.gap) == ("optimal", 0.0)
    assert plan.makespan == pytest.approx(30 + 6.0 + 2.0)


@pytest.mark.parametrize("seed", range(6))
def test_random_instances_with_steps_are_feasible_and_proven(seed):
    problem = random_small(10 + seed, seed=200 + seed)  # 10-15 tasks
    plan = solve(problem, PlannerOptions(time_limit_s=20))
    assert plan_violations(problem, plan) == []
    assert plan.status == "optimal" and plan.lower_bound == plan.makespan
    assert any("branch and bound" in n for n in plan.notes) or plan.makespan == plan.bounds["critical_path"]


def test_no_proof_claimed_when_the_search_is_cut_short():
    problem = random_small(12, seed=1029)
    inst = compile_problem(problem)
    start = weak_incumbent(inst)
    r = branch_and_bound(inst, start, lower_bound=0.0, deadline=time.perf_counter() + 30, max_nodes=3)
    assert not r.proven
    assert plan_violations(problem, as_plan(inst, r.best)) == []


def test_larger_problems_skip_the_branch_and_bound():
    problem = random_small(16, seed=3)
    plan = solve(problem, PlannerOptions(time_limit_s=1, max_binaries=0))
    assert plan_violations(problem, plan) == []
    assert not any("branch and bound" in n for n in plan.notes)


def test_a_plan_is_not_called_optimal_when_the_search_stops_early(monkeypatch):
    """The branch and bound cut off after one node (its root bound stays below the
    incumbent here) and no MILP (max_binaries=0): the plan keeps a gap and is not
    "optimal"."""
    monkeypatch.setattr(engine, "branch_and_bound", functools.partial(branch_and_bound, max_nodes=1))
    problem = random_small(15, seed=1034)
    plan = solve(problem, PlannerOptions(time_limit_s=2, max_binaries=0))
    assert plan_violations(problem, plan) == []
    assert any("branch and bound: no proof" in n for n in plan.notes)
    assert plan.status != "optimal" and plan.solver != "exact"
    assert 0 < plan.lower_bound < plan.makespan and plan.gap > 0
