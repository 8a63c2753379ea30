"""PSPLIB reader and solver on real benchmark files."""

import pytest

from planflow.planner import PlannerOptions, plan_violations, solve
from planflow.planner.psplib import read_optima, read_psplib, run_instances, write_csv


def test_read_j30(psplib):
    p = read_psplib(psplib / "j30" / "j301_1.sm")
    assert len(p.tasks) == 32
    assert dict(p.pools[0].capacity) == {"R1": 12, "R2": 13, "R3": 4, "R4": 12}
    t2 = p.tasks[1]
    assert t2.name == "2" and t2.after == ("1",) and t2.modes[0].duration == 8
    assert dict(t2.modes[0].demand) == {"R1": 4}


def test_read_mm(psplib):
    p = read_psplib(psplib / "mm-j10" / "j1010_1.mm")
    assert len(p.tasks) == 12 and len(p.tasks[1].modes) == 3
    assert dict(p.nonrenewable_capacity) == {"N1": 42, "N2": 17}
    assert p.tasks[2].modes[1].nonrenewable == {"N2": 6}


def test_read_optima(psplib):
    assert read_optima(psplib / "j30opt.sm")["j301_1"] == 43
    ref = read_optima(psplib / "mm-j10-reference.csv")
    assert ref["j1010_1"] == 17 and len(ref) == 536


def test_j301_1_optimum(psplib):
    p = read_psplib(psplib / "j30" / "j301_1.sm")
    plan = solve(p, PlannerOptions(time_limit_s=10))
    assert plan.makespan == 43 and plan.status == "optimal" and plan.gap == 0
    assert plan_violations(p, plan) == []


@pytest.mark.parametrize("name", ["j301_2", "j3010_1", "j3017_2", "j3046_3", "j3013_6"])
def test_j30_plans_valid(psplib, name):
    p = read_psplib(psplib / "j30" / f"{name}.sm")
    opt = read_optima(psplib / "j30opt.sm")[name]
    plan = solve(p, PlannerOptions(time_limit_s=3))
    assert plan_violations(p, plan) == []
    assert opt >= plan.lower_bound - 1e-9  # bounds must be valid
    assert plan.makespan >= opt
    assert plan.makespan <= plan.heuristic_makespan


@pytest.mark.parametrize("name", ["j1010_1", "j1020_5", "j1058_6"])
def test_mm_plans_valid_and_optimal(psplib, name):
    p = read_psplib(psplib / "mm-j10" / f"{name}.mm")
    opt = read_optima(psplib / "mm-j10-reference.csv")[name]
    plan = solve(p, PlannerOptions(time_limit_s=10))
    assert plan_violations(p, plan) == []
    assert opt >= plan.lower_bound - 1e-9
    assert plan.makespan == opt


def test_run_instances_rows(psplib, tmp_path):
    rows = run_instances([psplib / "j30" / "j301_1.sm"], time_limit_s=5)
    r = rows[0]
    assert r["instance"] == "j301_1" and r["jobs"] == 30 and r["optimum"] == 43
    assert r["makespan"] == 43 and r["deviation_pct"] == 0.0 and r["status"] == "optimal"
    write_csv(rows, tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text().startswith("instance,jobs,makespan")


def test_bounds_never_exceed_known_optima(psplib):
    from planflow.planner.bounds import lower_bounds
    from planflow.planner.instance import compile_problem

    optima = read_optima(psplib / "j30opt.sm")
    files = sorted((psplib / "j30").glob("*.sm"))[::6]  # 80 instances, bounds only
    for f in files:
        inst = compile_problem(read_psplib(f))
        assert max(lower_bounds(inst).values()) <= optima[f.stem] + 1e-9, f.stem


def test_time_indexed_model_proves_a_known_optimum(psplib):
    """DDT model: feasible at the optimum (and finds it), infeasible one slot below."""
    from planflow.planner.instance import compile_problem
    from planflow.planner.model import choose_grid, solve_milp

    inst = compile_problem(read_psplib(psplib / "j30" / "j301_1.sm"))  # optimum 43
    grid = choose_grid(inst, 43.0)
    assert grid.exact and grid.delta == 1.0
    at = solve_milp(inst, grid, horizon=43, lb_slots=0, solver="highs", time_limit=20)
    assert at.status == "optimal" and at.makespan_slots == 43
    below = solve_milp(inst, grid, horizon=42, lb_slots=0, solver="highs", time_limit=20)
    assert below.status == "infeasible"
