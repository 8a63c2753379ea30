"""``solve``: validate, list-schedule, bound, then let a MILP look for something better.

Pipeline (each step only runs while it can still pay off):

1. validate (errors name the offenders and the fix; cycles before anything is built);
2. lower bound = max(critical path, resource energy);
3. incumbent: serial SGS with LFT/LST/MTS/GRPW + biased random sampling, each improved by
   forward-backward improvement, then a short genetic algorithm (~1000 passes); stops as
   soon as the incumbent meets the lower bound (small problems: ~20 passes);
3b. small problems (at most ``exact_max_tasks``, default 15, tasks; no non-renewable
   budgets): a branch and bound over active schedules in continuous time (exact.py),
   whatever ``mip_gap`` says, for at most 70 % of the limit; a finished search proves the
   optimum (status "optimal", solver "exact") for any real-valued durations and
   capacity steps; if it runs out of time the MILP below takes over;
4. if a gap remains and the model is small enough (``max_binaries``): time-indexed MILP
   with horizon ``incumbent - 1 slot`` for 10 % of the limit (any solution is an
   improvement; "infeasible" proves the incumbent optimal on an exact grid); the
   solver's dual bound raises the lower bound.  Most j30 instances end here in ~0.1 s;
5. still open: a restarted GA seeded with the incumbent (stops on stagnation), then the
   MILP again for at most 40 % of the limit - only if round 1's dual bound is within two
   slots of the (possibly lower) horizon; otherwise stop early (noted in ``plan.notes``):
   on j30 such models were not proved within 6 s, so the time would buy nothing;
6. the plan is the best schedule found, so it is never worse than list scheduling.

Cost is secondary: cost = sum over tasks of ``duration * pool.cost_per_hour / 3600``.  The
SGS picks the cheaper of equally early modes and the MILP adds a cost term worth less than
one slot, so cost never buys makespan.  The branch and bound proves the makespan only;
among equally short schedules it keeps the incumbent's cost.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import pulp

from .bounds import lower_bounds
from .errors import InfeasibleError
from .exact import MAX_TASKS, applicable, branch_and_bound
from .heuristics import improve, initial_modes
from .instance import Instance, compile_problem
from .model import choose_grid, cost_varies, estimate_size, make_solver, solve_milp
from .plan import Plan, PlannedTask
from .problem import Problem, fmt, validate_problem
from .sgs import EPS, Schedule, fbi, order_of, serial_sgs


@dataclass(frozen=True)
class PlannerOptions:
    solver: str = "highs"  # "highs" | "cbc"; highs falls back to cbc when unavailable
    time_limit_s: float = 10.0
    threads: int = 1
    mip_gap: float = 0.0
    max_slots: int = 300  # time-grid slots over the horizon (non-integer durations)
    max_binaries: int = 25_000  # skip the MILP above this many x[j,m,t] variables
    heuristic_share: float = 0.15  # share of the time limit for the GA before the MILP
    exact_max_tasks: int = MAX_TASKS  # branch and bound (proof) up to this many tasks
    seed: int = 0


def solve(problem: Problem, options: PlannerOptions = PlannerOptions()) -> Plan:
    """Plan ``problem``: minimise makespan, then cost.  See the module doc for the method.

    Example::

        >>> plan = solve(problem, PlannerOptions(time_limit_s=5))   # doctest: +SKIP
        >>> plan.status, plan.makespan, plan.gap                      # doctest: +SKIP
        ('optimal', 43.0, 0.0)
    """
    t0 = time.perf_counter()
    deadline = t0 + options.time_limit_s
    validate_problem(problem)
    inst = compile_problem(problem)
    notes: list[str] = []
    if inst.n == 0:
        return Plan(
            {},
            0.0,
            0.0,
            {"critical_path": 0.0, "resource": 0.0},
            0.0,
            "optimal",
            "heuristic",
            time.perf_counter() - t0,
            0.0,
            0.0,
        )
    bounds = lower_bounds(inst)
    lb = max(bounds.values())

    rng = random.Random(options.seed)
    fixed_modes = None
    if any(m.nr for ms in inst.modes for m in ms):
        fixed_modes = initial_modes(inst, rng, 10)
        if not fixed_modes:
            fm = _nr_modes_milp(inst, options)
            if fm is None:
                raise InfeasibleError(_nr_message(inst))
            fixed_modes = [fm]

    # Phase 1, a quick incumbent: rules + FBI + a short GA (stops at the lower bound).
    # Small problems get a shorter GA: the branch and bound below finds better itself.
    small = fixed_modes is None and applicable(inst, options.exact_max_tasks)
    h_budget = min(options.time_limit_s * options.heuristic_share, 1.0)
    h = improve(
        inst,
        deadline=t0 + h_budget,
        lower_bound=lb,
        max_schedules=SMALL_SCHEDULES if small else max(FIRST_SCHEDULES, 10 * inst.n),
        seed=options.seed,
        fixed_modes=fixed_modes,
    )
    best: Schedule = h.best
    heuristic_ms = best.makespan
    st = _State(best=best, lb=lb, bounds=bounds, notes=notes, tolerance=options.mip_gap)
    bounds["solver"] = 0.0  # raised only by what a MILP proves (0 = proved nothing)

    # Small problems: a branch and bound over active schedules proves the optimum (or
    # improves the incumbent) whatever the durations; the MILP only runs if it times out.
    if small and best.makespan > lb + EPS:
        _exact_round(inst, st, min(deadline, time.perf_counter() + EXACT_SHARE * options.time_limit_s))

    # Round 1, a short proof attempt at horizon incumbent - 1: easy instances end here.
    if st.open() and time.perf_counter() < deadline - 0.05:
        _milp_round(
            inst, st, options, min(deadline - time.perf_counter(), max(0.5, ROUND1_SHARE * options.time_limit_s))
        )
    # Not proven: a restarted GA seeded with the incumbent, then the MILP again on the
    # (possibly shorter) horizon, only while that can still pay off.
    if st.open() and not st.finished and time.perf_counter() < deadline - 0.3:
        h2 = improve(
            inst,
            deadline=time.perf_counter() + GA2_SHARE * (deadline - time.perf_counter()),
            lower_bound=st.lb,
            max_schedules=10**9,
            seed=options.seed + 1,
            stall_limit=max(GA2_STALL, 100 * inst.n),
            fixed_modes=fixed_modes,
            seed_lists=[(order_of(inst, st.best), st.best.mode if fixed_modes else None)],
        )
        ga_improved = h2.best.makespan < st.best.makespan - EPS
        if h2.best.key(inst) < st.best.key(inst):
            if st.status == "heuristic":  # still pure list scheduling: it is the baseline
                heuristic_ms = min(heuristic_ms, h2.best.makespan)
            st.best = h2.best
        if st.open() and not st.skipped and time.perf_counter() < deadline - 0.5:
            budgets = fixed_modes is not None
            if _worth_round2(st, budgets, ga_improved):
                # With non-renewable budgets the GA is weak (mm-j10: 397/536 optima alone)
                # and the MILP is what finds the optima: give it the rest of the time.
                share = 1.0 if budgets else ROUND2_SHARE
                _milp_round(inst, st, options, min(deadline - time.perf_counter(), share * options.time_limit_s))
            else:
                notes.append(
                    "stopped early: MILP dual bound too far from its horizon to prove anything in the time left"
                )
    best, lb, status, solver_used = st.best, st.lb, st.status, st.solver
    if best.makespan > lb + EPS and not st.open():
        notes.append(f"stopped at gap {(best.makespan - lb) / best.makespan:.2%}, within mip_gap={options.mip_gap:.2%}")
    if best.makespan <= lb + EPS:
        status = "optimal"
        lb = best.makespan
    plan = _to_plan(inst, best, lb, bounds, status, solver_used, time.perf_counter() - t0, heuristic_ms, notes)
    return plan


# Effort per phase, measured side by side on a stratified j30 sample (figures in
# planner/README.md, "Measured"): a short first GA and a short first MILP end the easy
# instances in ~0.1 s instead of ~0.35 s.  Phase 2 keeps its 15k-pass stall limit: with
# 6k, the first 202 j30 instances lost 2 optima that the longer search finds.
FIRST_SCHEDULES = 1000  # phase 1 GA budget (SGS passes), at least 10 per task
ROUND1_SHARE = 0.1  # round 1 MILP: this share of the limit, at least 0.5 s
GA2_SHARE = 0.6  # phase 2 GA: at most this share of the time left ...
GA2_STALL = 15000  # ... and stops after this many passes without gain (>= 100 per task)
ROUND2_SHARE = 0.4  # round 2 MILP: at most this share of the limit
# Round 2 only runs when round 1 found a shorter schedule, or its dual bound is within
# this many slots of the current horizon (incumbent - 1): measured on j30, such models
# were mostly proved infeasible within 1-5 s, while models with a bound further away (or
# no bound after round 1) were not proved within 6 s.  With non-renewable budgets the
# earlier, wider rule stays (with the j30 rule, mm-j10 lost 2 optima: 535 -> 533).
PROMISING_SLOTS = 2.0


SMALL_SCHEDULES = 20  # phase 1 before the branch and bound (small problems): it finds better itself
# Branch and bound: at most this share of the limit, then the MILP.  With real-valued
# durations the MILP's grid is inexact and proves nothing, so the search gets most of it.
EXACT_SHARE = 0.7


@dataclass
class _State:
    best: Schedule
    lb: float
    bounds: dict[str, float]
    notes: list[str]
    status: str = "heuristic"
    solver: str = "heuristic"
    skipped: bool = False  # MILP too large for this problem
    finished: bool = False  # the MILP solved its grid model to the end: rerunning is useless
    dual_bound: float | None = None  # round 1's dual bound on the makespan (seconds)
    milp_improved: bool = False  # a MILP round found a shorter schedule than the incumbent
    delta: float = 1.0  # round 1's slot length
    tolerance: float = 0.0  # relative gap at which the search may stop (options.mip_gap)

    def open(self) -> bool:
        ms = self.best.makespan
        return ms > self.lb + EPS and (ms - self.lb) / ms > self.tolerance


def _exact_round(inst: Instance, st: _State, deadline: float) -> None:
    """Branch and bound (exact.py) from the incumbent; a finished search is a proof."""
    r = branch_and_bound(inst, st.best, st.lb, deadline)
    if r.improved:
        st.best = r.best
        st.status = "feasible"
    st.lb = max(st.lb, r.lower_bound)
    st.bounds["exact"] = r.lower_bound
    if r.proven:
        st.solver = "exact"
        st.notes.append(f"branch and bound: optimum proven in {r.seconds:.3f} s ({r.nodes} nodes)")
    else:
        st.notes.append(f"branch and bound: no proof within {r.seconds:.2f} s ({r.nodes} nodes); MILP next")


def _milp_round(inst: Instance, st: _State, options: PlannerOptions, limit: float) -> None:
    """One MILP search for a schedule shorter than the incumbent; updates ``st``."""
    grid = choose_grid(inst, st.best.makespan, options.max_slots)
    horizon = math.ceil(st.best.makespan / grid.delta - 1e-6) - 1
    lb_slots = math.ceil(st.lb / grid.delta - 1e-6)
    nb, _ = estimate_size(inst, grid, horizon)
    if nb > options.max_binaries:
        st.skipped = True
        st.notes.append(f"MILP skipped: {nb} binaries > max_binaries={options.max_binaries}")
        return
    r = solve_milp(inst, grid, horizon, lb_slots, options.solver, limit, options.threads, options.mip_gap)
    st.notes.extend(n for n in r.notes if n not in st.notes)
    st.finished = r.status in ("optimal", "infeasible")
    st.delta = grid.delta
    st.dual_bound = None if r.bound_slots is None else r.bound_slots * grid.delta
    bound = "-" if r.bound_slots is None else f"{r.bound_slots * grid.delta:g}"
    st.notes.append(
        f"MILP: {r.binaries} binaries, horizon {horizon * grid.delta:g}, "
        f"{r.status} in {r.seconds:.2f} s, dual bound {bound}"
    )
    st.solver = r.solver
    # Proofs only hold when the grid is exact (rounded-up durations make the grid model a
    # restriction, not a relaxation) and the gap tolerance is zero.
    proven = grid.exact and options.mip_gap <= 0
    if r.starts is not None and r.modes is not None:
        cand = _from_grid(inst, grid.delta, r.starts, r.modes)
        if cand.key(inst) < st.best.key(inst):
            st.milp_improved = cand.makespan < st.best.makespan - EPS
            st.best = cand
            st.status = "feasible"
        if r.status == "optimal" and proven:
            st.lb = max(st.lb, st.best.makespan)
            st.bounds["solver"] = st.best.makespan
    elif r.status == "infeasible" and proven:
        st.lb = max(st.lb, st.best.makespan)  # nothing shorter than the incumbent exists
        st.bounds["solver"] = st.best.makespan
    if r.bound_slots is not None and proven and r.status not in ("optimal", "infeasible"):
        # The model only holds schedules <= horizon, so its bound is valid up to horizon+1.
        # The objective may carry a cost term worth < 0.5 slot (see model.py).
        slack = 0.5 if cost_varies(inst) else 0.0
        b = min(math.ceil(r.bound_slots - slack - 1e-6), horizon + 1) * grid.delta
        b = min(b, st.best.makespan)
        st.bounds["solver"] = max(b, st.bounds.get("solver", 0.0))
        st.lb = max(st.lb, b)


def _worth_round2(st: _State, budgets: bool, ga_improved: bool) -> bool:
    """Round 1 made progress (found a shorter schedule), or its dual bound is within
    PROMISING_SLOTS of the current horizon (a better incumbent from phase 2 lowers the
    horizon and may bring it within reach).  With non-renewable budgets, as before this
    change: also when phase 2 improved, and a bound within max(2 slots, 10 %) suffices
    (mm-j10 models like that were often proved after 4-6 s)."""
    if st.milp_improved or (budgets and ga_improved):
        return True
    if st.dual_bound is None:
        return False
    horizon = st.best.makespan - st.delta
    slack = PROMISING_SLOTS * st.delta
    if budgets:
        slack = max(slack, 0.1 * horizon)
    return horizon - st.dual_bound <= slack + 1e-6


def _from_grid(inst: Instance, delta: float, starts: list[int], modes: list[int]) -> Schedule:
    """Real-time schedule from a grid solution: left-justify with serial SGS in the MILP's
    order and modes (real durations <= grid durations, so the grid times are feasible too;
    keep whichever is shorter)."""
    grid_s = Schedule(
        [s * delta for s in starts],
        list(modes),
        max(s * delta + inst.modes[j][modes[j]].dur for j, s in enumerate(starts)),
    )
    tp = inst.topo_pos
    order = sorted(range(inst.n), key=lambda j: (starts[j], tp[j]))
    sgs = serial_sgs(inst, order, modes)
    cand = sgs if sgs.makespan <= grid_s.makespan + EPS else grid_s
    cand2, _ = fbi(inst, cand)
    return cand2


def _to_plan(
    inst: Instance,
    s: Schedule,
    lb: float,
    bounds: dict[str, float],
    status: str,
    solver: str,
    seconds: float,
    heuristic_ms: float,
    notes: list[str],
) -> Plan:
    tasks = {}
    for j, name in enumerate(inst.names):
        m = inst.modes[j][s.mode[j]]
        task = inst.problem.tasks[j]
        um = task.modes[m.orig]
        tasks[name] = PlannedTask(
            name=name,
            pool=um.pool,
            mode=m.orig,
            start=s.start[j],
            finish=s.start[j] + m.dur,
            duration=m.dur,
            demand=dict(um.demand),
        )
    ms = s.makespan
    gap = 0.0 if ms <= EPS else max(0.0, (ms - lb) / ms)
    return Plan(
        tasks=tasks,
        makespan=ms,
        lower_bound=lb,
        bounds=dict(bounds),
        gap=gap,
        status=status,
        solver=solver,
        solve_seconds=seconds,
        heuristic_makespan=heuristic_ms,
        cost=s.cost(inst),
        notes=tuple(notes),
    )


def _nr_modes_milp(inst: Instance, options: PlannerOptions) -> list[int] | None:
    """Exact check: a mode per task within every non-renewable budget (None if none)."""
    prob = pulp.LpProblem("modes", pulp.LpMinimize)
    y = [[pulp.LpVariable(f"y_{j}_{m}", cat=pulp.LpBinary) for m in range(len(ms))] for j, ms in enumerate(inst.modes)]
    prob += pulp.lpSum(inst.modes[j][m].dur * y[j][m] for j in range(inst.n) for m in range(len(y[j])))
    for j in range(inst.n):
        prob += pulp.lpSum(y[j]) == 1
    for k, cap in enumerate(inst.nr_caps):
        prob += (
            pulp.lpSum(
                a * y[j][m]
                for j in range(inst.n)
                for m, mode in enumerate(inst.modes[j])
                for kk, a in mode.nr
                if kk == k
            )
            <= cap
        )
    slv, _, _ = make_solver(options.solver, max(options.time_limit_s, 1.0), options.threads, 0.0)
    prob.solve(slv)
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return None
    return [max(range(len(y[j])), key=lambda m: y[j][m].varValue or 0.0) for j in range(inst.n)]


def _nr_message(inst: Instance) -> str:
    budgets = ", ".join(f"{r}={fmt(c)}" for r, c in zip(inst.nr_names, inst.nr_caps, strict=True))
    mins = ", ".join(
        f"{r}>={fmt(sum(min(dict(m.nr).get(k, 0.0) for m in ms) for ms in inst.modes))}"
        for k, r in enumerate(inst.nr_names)
    )
    return (
        f"no combination of modes satisfies the non-renewable budgets ({budgets}): each "
        f"budget alone can be met (thriftiest totals {mins}) but not all at once. "
        f"Fix: raise a budget or give tasks modes that use less of these resources."
    )
