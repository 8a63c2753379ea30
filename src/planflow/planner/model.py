"""Time-indexed MILP (PuLP; HiGHS or CBC) that searches for schedules shorter than the
heuristic incumbent.

Formulation (Pritsker et al. 1969 with disaggregated precedence, Christofides et al. 1987):
binary ``x[j,m,t] = 1`` iff task j runs in mode m starting at slot t.

* each task: one (mode, start)            sum_{m,t} x[j,m,t] = 1
* precedence i -> j (disaggregated, DDT): for every slot t
  ``sum_{m, s + d_im <= t} x[i,m,s] >= sum_{m, s <= t} x[j,m,s]`` ("j started by t implies
  i finished by t"); much tighter LP than one aggregated row per arc. When the number of
  non-zeros would explode (large pipelines) one aggregated row per arc is used instead.
* renewable capacity per pool, resource and slot (rows that can never bind are skipped);
  a pool whose capacity varies over time (steps) offers in a slot the least it has in it;
* non-renewable budgets; makespan ``C >= finish`` of every task without successors.

Why it stays small: the horizon is ``incumbent - 1`` slots (we only look for improvements;
an infeasible model PROVES the incumbent optimal), and start windows are cut to
``[ES, LS]`` from the critical path inside that horizon.  CALIBRATION.md measured that the
horizon is what matters most (8x fewer binaries than a naive horizon).

Objective: minimise ``C`` (integer, in slots), plus, only when pools have different costs,
``0.5 * cost / max_cost`` so cost breaks ties without ever trading a slot of makespan.

Non-integer durations are put on a grid of ``delta`` seconds chosen so the horizon has at
most ``max_slots`` slots; durations are rounded UP, so a grid schedule is feasible in real
time; ``engine`` then re-runs the continuous serial SGS with the MILP's order and modes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pulp

from .instance import Instance

EPS = 1e-9


@dataclass
class Grid:
    delta: float  # seconds per slot
    dslot: list[list[int]]  # duration in slots per task and (instance) mode
    exact: bool  # True when every duration and capacity step boundary is a whole number of slots


def choose_grid(inst: Instance, horizon: float, max_slots: int = 300) -> Grid:
    """Slot length: 1 for integer durations with a short horizon, else horizon/max_slots."""
    times = inst.times()  # durations and capacity step boundaries: a start lies on their grid
    if inst.integral:
        g = 0
        for d in times:
            g = math.gcd(g, int(round(d)))
        g = max(g, 1)
        k = max(1, math.ceil(horizon / (g * max_slots)))
        delta = float(g * k)
    else:
        delta = max(horizon / max_slots, 1e-6)
    exact = all(abs(d / delta - round(d / delta)) < 1e-6 for d in times)
    dslot = [[int(math.ceil(m.dur / delta - 1e-6)) if m.dur > EPS else 0 for m in ms] for ms in inst.modes]
    return Grid(delta, dslot, exact)


@dataclass
class Windows:
    es: list[int]
    ls: list[list[int]]  # per task and mode; < es means the mode cannot fit the horizon


def windows(inst: Instance, dslot: list[list[int]], horizon: int) -> Windows:
    n = inst.n
    dmin = [min(d) for d in dslot]
    es = [0] * n
    for j in inst.topo:
        for p in inst.preds[j]:
            es[j] = max(es[j], es[p] + dmin[p])
    q = [0] * n  # shortest time from j's start to the end of the project
    for j in reversed(inst.topo):
        q[j] = dmin[j] + max((q[s] for s in inst.succs[j]), default=0)
    ls = []
    for j in range(n):
        after = max((q[s] for s in inst.succs[j]), default=0)
        ls.append([horizon - d - after for d in dslot[j]])
    return Windows(es, ls)


def estimate_size(inst: Instance, grid: Grid, horizon: int) -> tuple[int, int]:
    """(binaries, DDT precedence non-zeros) of the model, computed before building it."""
    w = windows(inst, grid.dslot, horizon)
    nb = sum(max(0, ls - w.es[j] + 1) for j in range(inst.n) for ls in w.ls[j])
    per_task = [sum(max(0, ls - w.es[j] + 1) for ls in w.ls[j]) for j in range(inst.n)]
    nz = 0
    for j in range(inst.n):
        span = max(max(w.ls[j]) - w.es[j] + 1, 0)
        for i in inst.preds[j]:
            nz += span * (per_task[i] + per_task[j]) // 2
    return nb, nz


@dataclass
class MilpResult:
    status: str  # "optimal" | "feasible" | "infeasible" (proven) | "unknown" (nothing found)
    solver: str
    starts: list[int] | None = None  # start slot per task
    modes: list[int] | None = None  # instance mode index per task
    makespan_slots: int | None = None
    bound_slots: float | None = None  # solver's dual bound on C, if known
    binaries: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def cost_varies(inst: Instance) -> bool:
    """True when some task's modes differ in cost, i.e. the MILP carries a cost term."""
    return any(max(m.cost for m in ms) - min(m.cost for m in ms) > EPS for ms in inst.modes)


def make_solver(name: str, time_limit: float, threads: int, mip_gap: float) -> tuple[object, str, str]:
    """Return (pulp solver, solver name used, note). HiGHS falls back to CBC if missing."""
    note = ""
    if name == "highs":
        s = pulp.HiGHS(msg=False, timeLimit=max(time_limit, 0.01), threads=threads, gapRel=mip_gap)
        if s.available():
            return s, "highs", note
        note = "HiGHS (highspy) unavailable; fell back to CBC"
    elif name != "cbc":
        raise ValueError(f"unknown solver {name!r}; use 'highs' or 'cbc'")
    s = pulp.PULP_CBC_CMD(msg=False, timeLimit=max(time_limit, 1.0), threads=threads, gapRel=mip_gap)
    return s, "cbc", note


def solve_milp(
    inst: Instance,
    grid: Grid,
    horizon: int,
    lb_slots: int,
    solver: str,
    time_limit: float,
    threads: int = 1,
    mip_gap: float = 0.0,
    ddt_nonzero_limit: int = 400_000,
) -> MilpResult:
    """Find a schedule with makespan <= ``horizon`` slots, minimising makespan then cost."""
    t0 = time.perf_counter()
    n = inst.n
    dslot = grid.dslot
    w = windows(inst, dslot, horizon)
    slv, used, note = make_solver(solver, time_limit, threads, mip_gap)
    res = MilpResult(status="unknown", solver=used)
    if note:
        res.notes.append(note)
    if horizon < lb_slots or any(all(ls < w.es[j] for ls in w.ls[j]) for j in range(n)):
        res.status = "infeasible"  # no task fits inside the horizon: nothing to solve
        res.seconds = time.perf_counter() - t0
        return res

    prob = pulp.LpProblem("rcpsp", pulp.LpMinimize)
    x: list[dict[tuple[int, int], pulp.LpVariable]] = []
    for j in range(n):
        xj = {}
        for m, ls in enumerate(w.ls[j]):
            for t in range(w.es[j], ls + 1):
                xj[m, t] = pulp.LpVariable(f"x_{j}_{m}_{t}", cat=pulp.LpBinary)
        x.append(xj)
    res.binaries = sum(len(xj) for xj in x)
    C = pulp.LpVariable("C", lowBound=max(lb_slots, 0), upBound=horizon, cat=pulp.LpInteger)

    costs = [[m.cost for m in ms] for ms in inst.modes]
    obj = [(C, 1.0)]
    if cost_varies(inst):
        scale = 0.5 / max(sum(max(c) for c in costs), EPS)
        obj += [(v, scale * costs[j][m]) for j in range(n) for (m, _), v in x[j].items()]
    prob += pulp.LpAffineExpression(obj)

    for j in range(n):
        prob += pulp.LpAffineExpression([(v, 1.0) for v in x[j].values()]) == 1, f"one_{j}"

    _, nz = estimate_size(inst, grid, horizon)
    ddt = nz <= ddt_nonzero_limit
    if not ddt:
        res.notes.append(f"aggregated precedence ({nz} DDT non-zeros > {ddt_nonzero_limit})")
    for j in range(n):
        for i in inst.preds[j]:
            if not ddt:
                expr = [(v, float(t)) for (m, t), v in x[j].items()]
                expr += [(v, -float(t + dslot[i][m])) for (m, t), v in x[i].items()]
                prob += pulp.LpAffineExpression(expr) >= 0, f"p_{i}_{j}"
                continue
            i_done_max = max(t + dslot[i][m] for (m, t) in x[i])
            j_max = max(t for (_, t) in x[j])
            for t in range(w.es[j], min(j_max, i_done_max - 1) + 1):
                expr = [(v, 1.0) for (m, s), v in x[i].items() if s + dslot[i][m] <= t]
                expr += [(v, -1.0) for (m, s), v in x[j].items() if s <= t]
                prob += pulp.LpAffineExpression(expr) >= 0, f"p_{i}_{j}_{t}"

    # Renewable capacity: per pool p, resource k, slot t.
    # A slot's capacity is the least the pool has anywhere in it (capacity steps).
    for p in range(len(inst.caps)):
        rows: dict[tuple[int, int], list[tuple[pulp.LpVariable, float]]] = {}
        peak: dict[tuple[int, int], dict[int, float]] = {}
        for j in range(n):
            for (m, s), v in x[j].items():
                mode = inst.modes[j][m]
                if mode.pool != p:
                    continue
                for k, r in mode.dem:
                    for t in range(s, s + dslot[j][m]):
                        rows.setdefault((k, t), []).append((v, r))
                        pk = peak.setdefault((k, t), {})
                        pk[j] = max(pk.get(j, 0.0), r)
        for (k, t), expr in rows.items():
            cap = inst.cap_between(p, k, t * grid.delta, (t + 1) * grid.delta)
            if sum(peak[k, t].values()) <= cap + EPS:
                continue  # can never bind
            prob += pulp.LpAffineExpression(expr) <= cap, f"r_{p}_{k}_{t}"

    for k, capk in enumerate(inst.nr_caps):
        expr = [(v, a) for j in range(n) for (m, _), v in x[j].items() for kk, a in inst.modes[j][m].nr if kk == k]
        if expr:
            prob += pulp.LpAffineExpression(expr) <= capk, f"nr_{k}"

    for j in range(n):
        if not inst.succs[j]:
            expr = [(v, float(t + dslot[j][m])) for (m, t), v in x[j].items()] + [(C, -1.0)]
            prob += pulp.LpAffineExpression(expr) <= 0, f"c_{j}"

    left = time_limit - (time.perf_counter() - t0)
    if left <= 0.05:
        res.notes.append("no time left to run the solver after building the model")
        res.seconds = time.perf_counter() - t0
        return res
    # Margin: PuLP loads the model into the solver row by row in Python, outside the
    # solver's clock (measured ~0.6 s for 20k binaries), and HiGHS overshoots slightly.
    slv.timeLimit = max(left - 0.3 - 4e-5 * res.binaries, 0.05 if used == "highs" else 1.0)
    try:
        prob.solve(slv)
    except pulp.PulpSolverError as e:  # solver crashed / missing binary: heuristic survives
        res.notes.append(f"solver error: {e}")
        res.seconds = time.perf_counter() - t0
        return res
    res.seconds = time.perf_counter() - t0

    if prob.status == pulp.LpStatusInfeasible:
        res.status = "infeasible"
        return res
    if prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        starts, modes = [0] * n, [0] * n
        for j in range(n):
            for (m, t), v in x[j].items():
                if (v.varValue or 0.0) > 0.5:
                    starts[j], modes[j] = t, m
                    break
        res.starts, res.modes = starts, modes
        res.makespan_slots = max(starts[j] + dslot[j][modes[j]] for j in range(n))
        res.status = "optimal" if prob.sol_status == pulp.LpSolutionOptimal else "feasible"
    if used == "highs":
        try:
            b = float(prob.solverModel.getInfo().mip_dual_bound)
            if math.isfinite(b):
                res.bound_slots = b
        except Exception:  # pragma: no cover - info not available for this status
            pass
    return res
