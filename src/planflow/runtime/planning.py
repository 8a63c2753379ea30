"""From a pipeline and the ResourcePool blocks to a plan and an assignment of every step.

The first stage of a run (plan -> dispatch -> record): `plan_run` reads the pools the
run may use and places every step, with the planner (policy "plan") or first come,
first served (policy "fifo"). Pools are read only through the ResourcePool blocks. A
step's allowed pools are its spec's `pools` (any pool when empty); a step that fits
none of them is reported with its demand, every pool's capacity and the fix.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from planflow.core.pipeline import Pipeline
from planflow.planner import Mode, Plan, PlannerOptions, Pool, Problem, Step, Task, solve
from planflow.prefect.blocks.planner_settings import PlannerSettings
from planflow.prefect.blocks.registry import DEFAULT_POOL, load_pools, load_settings
from planflow.prefect.blocks.resource_pool import ResourcePool
from planflow.prefect.run_logger import run_logger
from planflow.runtime.caching import cached_estimate, predicted_cached
from planflow.runtime.dask_cluster import dask_pools, require_offered, worker_offers
from planflow.runtime.dispatch import RESOURCES, Assignment
from planflow.runtime.distributed import DeploymentMissingError, readiness
from planflow.runtime.eta_history import Allowance
from planflow.runtime.history import Estimate, estimate, read_once, recent_durations, work_scale
from planflow.runtime.memory import MemoryFigure, memory_figures

POLICIES = ("plan", "fifo")
MODES = ("inprocess", "distributed", "dask")


class PoolError(ValueError):
    """A step names a pool that does not exist, or fits no pool it may use."""


def step_demand(pipeline: Pipeline, name: str, memory: Mapping[str, MemoryFigure] | None = None) -> dict[str, float]:
    """A step's demand: its declaration, with the learned memory where there is one."""
    demand = pipeline.steps[name].spec.demand()
    if memory and name in memory:
        demand["mem_gib"] = memory[name].gib
    return demand


def _fmt(vector: Mapping[str, float]) -> str:
    return ", ".join(f"{r}={vector.get(r, 0.0):g}" for r in RESOURCES)


def allowed_pools(
    pipeline: Pipeline,
    capacities: Mapping[str, Mapping[str, float]],
    known_pools: set[str] | None = None,
    memory: Mapping[str, MemoryFigure] | None = None,
) -> dict[str, list[str]]:
    """Every step's usable pools among `capacities` (allowed by its spec and big
    enough), or PoolError listing every step that has none. Pool names in a spec are
    checked against `known_pools` (default: the pools in `capacities`)."""
    known = known_pools if known_pools is not None else set(capacities)
    problems: list[str] = []
    allowed: dict[str, list[str]] = {}
    for name, step in pipeline.steps.items():
        spec, demand = step.spec, step_demand(pipeline, name, memory)
        unknown = [p for p in spec.pools if p not in known]
        for pool in unknown:
            match = difflib.get_close_matches(pool, list(capacities), n=1)
            hint = f" Did you mean '{match[0]}'?" if match else ""
            problems.append(
                f"step '{name}' names pool '{pool}', which has no ResourcePool block.{hint} "
                f"Known pools: {', '.join(sorted(known))}. Fix: create the block "
                f"(`planflow pools set {pool} --cpu N --mem-gib N`) or change the component's pools"
            )
        candidates = [p for p in capacities if spec.allows(p)]
        left = {p: why for p, why in getattr(known_pools, "left_out", {}).items() if spec.allows(p)}
        if not candidates and not unknown and left:  # its pools are left out of this run, each for a reason
            problems.append(
                f"step '{name}' may run only on pools {list(spec.pools)}, and this run leaves "
                + "; ".join(f"'{p}' out: {why}" for p, why in sorted(left.items()))
            )
        elif not candidates and not unknown:
            problems.append(
                f"step '{name}' may run only on pools {list(spec.pools)}, and this run uses "
                f"{', '.join(capacities)}. Fix: run it on one of them (`planflow run NAME --pool POOL`, the "
                f"flow's local_pool parameter) or where they all are (--mode distributed), or add "
                f"{', '.join(repr(p) for p in capacities)} to its pools"
            )
        fitting = [p for p in candidates if all(demand[r] <= capacities[p].get(r, 0.0) + 1e-9 for r in RESOURCES)]
        if candidates and not fitting:
            pools = "; ".join(f"{p} ({_fmt(capacities[p])})" for p in candidates)
            short = {r: demand[r] for r in RESOURCES if all(demand[r] > capacities[p].get(r, 0.0) for p in candidates)}
            fix = (
                " and ".join(
                    f"lower its {r} to <= {max(capacities[p].get(r, 0.0) for p in candidates):g}" for r in short
                )
                or "lower its demand"
            )
            bigger = ", ".join(f"{r} >= {v:g}" for r, v in (short or demand).items())
            # a step pinned to pools runs on no other: a new pool helps once it is named there too
            pinned = f" and add it to the component's pools (now {list(spec.pools)})" if spec.pools else ""
            # an in-process run uses one pool: a new pool serves it only when named (a user added
            # the pool as told, and met the same refusal); distributed and Dask runs use every pool
            there = (
                " and run it there (`planflow run NAME --pool POOL`, or --mode distributed over every pool)"
                if not hasattr(known_pools, "left_out")
                else ""
            )
            problems.append(
                f"step '{name}' needs {_fmt(demand)} but fits no pool it may use: {pools}. "
                f"Fix: {fix}, or add a ResourcePool with {bigger}{pinned}{there}"
            )
        allowed[name] = fitting
    if problems:
        raise PoolError(f"pipeline '{pipeline.name}' cannot be placed:\n" + "\n".join(f"  - {p}" for p in problems))
    return allowed


def greedy_assignments(
    pipeline: Pipeline,
    capacities: Mapping[str, Mapping[str, float]],
    costs: Mapping[str, float] | None = None,
    known_pools: set[str] | None = None,
) -> dict[str, Assignment]:
    """Each step on its fastest usable pool (then cheapest), released in
    topological order. This is how a run is dispatched without a plan."""
    allowed = allowed_pools(pipeline, capacities, known_pools)
    costs = costs or {}
    assignments = {}
    for index, name in enumerate(pipeline.topological_order()):
        spec = pipeline.steps[name].spec
        pool = min(allowed[name], key=lambda p: (spec.seconds_on(p), costs.get(p, 0.0), p))
        assignments[name] = Assignment(step=name, pool=pool, demand=spec.demand(), priority=index)
    return assignments


@dataclass(frozen=True)
class PipelinePlan:
    """A pipeline's plan, the dispatch order it implies, and where estimates came from."""

    plan: Plan
    assignments: dict[str, Assignment]
    estimates: dict[tuple[str, str], Estimate]
    problem: Problem
    memory: Mapping[str, MemoryFigure] = field(default_factory=dict)  # learned or declared, per step

    def source_of(self, step: str) -> str:
        return self.estimates[(step, self.plan[step].pool)].source


def build_problem(
    pipeline: Pipeline,
    capacities: Mapping[str, Mapping[str, float]],
    costs: Mapping[str, float],
    history: Mapping[tuple[str, str], list[float]] | None = None,
    known_pools: set[str] | None = None,
    steps: Mapping[str, tuple[Step, ...]] | None = None,
    *,
    scale: Mapping[str, float] | None = None,
    cached: set[str] | frozenset[str] = frozenset(),
    memory: Mapping[str, MemoryFigure] | None = None,
) -> tuple[Problem, dict[tuple[str, str], Estimate]]:
    """The planner's problem: one mode per usable pool, with learned or declared durations
    (declared ones times the step's work factor in `scale`, see history.work_scale);
    `steps` is each pool's capacity over time left by other runs (the pool calendar);
    `cached` steps will be read from the cache (runtime/caching.py): almost no time;
    `memory`: each step's memory to plan with, learned where measured (memory.py)."""
    allowed = allowed_pools(pipeline, capacities, known_pools, memory)
    history, scale = history or {}, scale or {}
    estimates: dict[tuple[str, str], Estimate] = {}
    tasks = []
    for name in pipeline.topological_order():
        spec = pipeline.steps[name].spec
        modes = []
        for pool in allowed[name]:
            declared = spec.seconds_on(pool)
            est = estimate(declared, pool in spec.est_seconds_by_pool, history, name, pool, scale.get(name, 1.0))
            est = cached_estimate() if name in cached else est
            estimates[(name, pool)] = est
            modes.append(Mode(pool=pool, duration=est.seconds, demand=step_demand(pipeline, name, memory)))
        tasks.append(Task(name=name, modes=tuple(modes), after=pipeline.upstream(name)))
    steps = steps or {}
    pools = tuple(
        Pool(name=p, capacity=dict(capacities[p]), cost_per_hour=costs.get(p, 0.0), steps=steps.get(p, ()))
        for p in capacities
    )
    return Problem(tasks=tuple(tasks), pools=pools), estimates


def plan_pipeline(
    pipeline: Pipeline,
    capacities: Mapping[str, Mapping[str, float]],
    costs: Mapping[str, float],
    options: PlannerOptions,
    history: Mapping[tuple[str, str], list[float]] | None = None,
    known_pools: set[str] | None = None,
    steps: Mapping[str, tuple[Step, ...]] | None = None,
    *,
    scale: Mapping[str, float] | None = None,
    cached: set[str] | frozenset[str] = frozenset(),
    memory: Mapping[str, MemoryFigure] | None = None,
) -> PipelinePlan:
    """Plan the pipeline; assignments release steps in planned start order."""
    problem, estimates = build_problem(
        pipeline, capacities, costs, history, known_pools, steps, scale=scale, cached=cached, memory=memory
    )
    plan = solve(problem, options)
    assignments = {
        t.name: Assignment(
            step=t.name,
            pool=t.pool,
            demand=dict(t.demand),
            priority=t.start,
            planned_start=t.start,
            planned_finish=t.finish,
        )
        for t in plan.order_tasks()
    }
    return PipelinePlan(plan, assignments, estimates, problem, dict(memory or {}))


# -- a run's plan -------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPlan:
    """Everything a run decided before it dispatches: the pools it may use (ResourcePool
    blocks) and their capacities, where each step runs and in what order, and the
    planner's plan (None under policy "fifo")."""

    pools: dict[str, Any]
    capacities: dict[str, dict[str, float]]
    assignments: dict[str, Assignment]
    plan: PipelinePlan | None = None
    planned_at: float = 0.0  # Unix time of the plan's time 0
    busy: int = 0  # other runs' components the plan was fitted around (the pool calendar)
    allowance: Allowance = Allowance()  # the ETA is planned_at + makespan x its factor (eta_history.py)

    @property
    def order(self) -> list[str]:
        """Steps by priority: the planned start, or topological order under fifo."""
        return sorted(self.assignments, key=lambda step: self.assignments[step].priority)

    @property
    def work_pools(self) -> dict[str, str]:
        """planflow pool -> the Prefect work pool that runs its components."""
        return {name: pool.work_pool for name, pool in self.pools.items()}


def _logger() -> logging.Logger | logging.LoggerAdapter:
    return run_logger()


class KnownPools(frozenset):
    """The names of all the pools (a frozenset), with those a Dask or distributed run leaves
    out and why (`left_out`): a step that may run only there is refused naming that (it was
    told to use --pool or to add the pools the run had, when its pool's Dask worker had
    only ended)."""

    left_out: dict[str, str]

    def __new__(cls, names: Iterable[str], left_out: Mapping[str, str] | None = None) -> KnownPools:
        known = super().__new__(cls, names)
        known.left_out = dict(left_out or {})
        return known


DASK_LEFT_OUT = (
    "no Dask worker offers its resources (one that ended: planflow dask status names it). "
    "Fix: planflow dask up starts the missing workers"
)


def run_pools(
    mode: str, local_pool: str = DEFAULT_POOL, pools: dict[str, ResourcePool] | None = None
) -> tuple[dict[str, Any], set[str]]:
    """The ResourcePools a run may use, and the names of all of them.

    In-process, every component runs in this flow run's process: only the pool that
    process stands for (`local_pool`, default `local`) has capacity for it. Distributed,
    every pool does whose work pool is ready (deployment and live worker); the others
    are left out of the plan with a warning saying why. `pools`: the ResourcePools already
    read (read_run_blocks), else they are read here."""
    pools = load_pools() if pools is None else pools
    if mode == "dask":  # the pools whose resources the Dask cluster's workers offer
        usable = dask_pools(pools, _logger())
        return usable, KnownPools(pools, dict.fromkeys(set(pools) - set(usable), DASK_LEFT_OUT))
    if mode == "distributed":
        _, problems = readiness({pool.work_pool for pool in pools.values()})
        usable = {n: p for n, p in pools.items() if p.work_pool not in problems}
        left_out = {
            n: f"its work pool '{p.work_pool}' is not ready ({_in_short(problems[p.work_pool])}). "
            f"Fix: planflow workpools status {p.work_pool} says what it needs"
            for n, p in pools.items()
            if p.work_pool in problems
        }
        if problems and usable:  # one line a run: every run said each pool's whole fix text again
            _logger().warning(
                "left out of the plan: %s (what each needs: planflow workpools status POOL)",
                ", ".join(f"work pool '{pool}' ({_in_short(why)})" for pool, why in sorted(problems.items())),
            )
        if not usable:
            lines = [p for pool in sorted(problems) for p in problems[pool]]
            raise DeploymentMissingError(
                "distributed mode has no ready work pool:\n" + "\n".join(f"  - {p}" for p in lines)
            )
        return usable, KnownPools(pools, left_out)
    if local_pool not in pools:
        raise ValueError(f"pool '{local_pool}': {no_pool_block(local_pool, pools)}")
    return {local_pool: pools[local_pool]}, set(pools)


def no_pool_block(pool: str, pools: Mapping[str, Any]) -> str:
    """Why `pool` cannot be used (no ResourcePool block of that name), the pools there are,
    and the fix."""
    return (
        f"no ResourcePool block of that name (pools: {', '.join(sorted(pools))}). "
        f"Fix: planflow pools set {pool} --cpu N --mem-gib N, or choose another pool"
    )


def _in_short(problems: list[str]) -> str:
    """What keeps a work pool out of a distributed plan, in a few words."""
    said = " ".join(problems)
    short = [
        words
        for marker, words in (
            ("does not exist", "does not exist"),
            ("no deployment", "no component deployment"),
            ("no worker running", "no worker"),
            ("PAUSED", "paused"),
        )
        if marker in said
    ]
    return ", ".join(short) or problems[0][:80]


@dataclass(frozen=True)
class PlanInputs:
    """What a plan reads from the server besides the pools: the learned durations, the
    memory to plan each step with, the steps that will be read from the cache. Read
    before a shared run takes the planning slot (they do not depend on the calendar:
    read under it, a 30-step pipeline held the slot about 13 s on a loaded server)."""

    history: Mapping[tuple[str, str], list[float]]
    memory: Mapping[str, MemoryFigure]
    cached: set[str]
    settings: PlannerSettings | None = None  # the PlannerSettings block as read for these (read once per plan)


def plan_inputs(
    pipeline: Pipeline,
    params: Mapping[str, Any] | None = None,
    refresh: bool = False,
    settings: PlannerSettings | None = None,
    mode: str = "inprocess",
) -> PlanInputs:
    """`settings`: the PlannerSettings block, when read already (run_reads.py); `mode`:
    the run's, whose earlier runs' durations the plan takes (history.ran_as)."""
    settings = settings or load_settings()
    with read_once():  # durations and memory come from the same records: one read each
        durations = recent_durations(pipeline, settings.history_runs, params, mode)
        memory = memory_figures(pipeline, settings.history_runs, settings.memory_quantile, settings.memory_margin)
    return PlanInputs(durations, memory, set() if refresh else predicted_cached(pipeline, params), settings)


def make_plan(
    pipeline: Pipeline,
    mode: str = "inprocess",
    local_pool: str = DEFAULT_POOL,
    pools: tuple[dict[str, Any], set[str]] | None = None,
    steps: Mapping[str, tuple[Step, ...]] | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    refresh: bool = False,
    time_limit_s: float | None = None,
    inputs: PlanInputs | None = None,
) -> PipelinePlan:
    """Plan `pipeline` over the ResourcePool blocks usable in `mode`, with the
    PlannerSettings block and durations learned from its components' recent runs
    (history.py), scaled to the work of a run with `params`; `steps` is each pool's
    capacity over time left by other runs. Steps that will be read from the cache get
    almost no time (unless `refresh`). `time_limit_s` caps the settings' time limit;
    `inputs` are those read beforehand (plan_inputs)."""
    usable, known = pools if pools is not None else run_pools(mode, local_pool)
    capacities = {name: pool.capacity() for name, pool in usable.items()}
    costs = {name: pool.cost_per_hour for name, pool in usable.items()}
    inputs = inputs or plan_inputs(pipeline, params, refresh, mode=mode)
    settings = inputs.settings or load_settings()  # read once: the inputs' read (plan_inputs) is this plan's
    options = PlannerOptions(
        solver=settings.solver,
        time_limit_s=min(settings.time_limit_s, time_limit_s or settings.time_limit_s),
        threads=settings.threads,
        mip_gap=settings.mip_gap,
    )
    pp = plan_pipeline(
        pipeline,
        capacities,
        costs,
        options,
        inputs.history,
        known,
        steps,
        scale=work_scale(pipeline, params),
        cached=inputs.cached,
        memory=inputs.memory,
    )
    if mode == "dask":  # refused now, not left waiting on the cluster
        require_offered(pp.assignments, worker_offers())
    return pp


def estimated_seconds(
    pipeline: Pipeline,
    assignments: Mapping[str, Assignment],
    params: Mapping[str, Any] | None = None,
    mode: str = "inprocess",
) -> dict[str, float]:
    """Each step's expected seconds on its assigned pool, as the planner would take it
    (learned or declared, scaled to the run's work): what a fifo run's ETA is made of."""
    history = recent_durations(pipeline, load_settings().history_runs, params, mode)
    scale = work_scale(pipeline, params)
    out = {}
    for name, a in assignments.items():
        spec = pipeline.steps[name].spec
        declared = spec.seconds_on(a.pool)
        out[name] = estimate(
            declared, a.pool in spec.est_seconds_by_pool, history, name, a.pool, scale.get(name, 1.0)
        ).seconds
    return out


def check_run_options(policy: str, mode: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r}: must be 'plan' or 'fifo'")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: must be 'inprocess', 'distributed' or 'dask'")


# The longest a run sharing its pools may solve while it holds the planning slot that every
# run of a burst waits for. The fleet benchmark's 30-component pipeline planned into five
# busy calendars: 1.45-1.57 s of CPU with 2 s, 0.51-0.99 s with 0.5 s, for makespans at
# most 1 % longer (its plans are re-planned as the calendar moves anyway); the smaller
# pipelines are proven within milliseconds either way.
SHARED_PLAN_SECONDS = 0.5


def plan_run(
    pipeline: Pipeline,
    policy: str = "plan",
    mode: str = "inprocess",
    local_pool: str = DEFAULT_POOL,
    pools: tuple[dict[str, Any], set[str]] | None = None,
    busy: Callable[[Mapping[str, Mapping[str, float]], float], tuple[dict[str, tuple[Step, ...]], int]] | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    refresh: bool = False,
    inputs: PlanInputs | None = None,
) -> RunPlan:
    """Where and in what order each step of one run goes: planned (policy "plan") or
    first come, first served on each step's fastest pool (policy "fifo"). `busy` gives,
    from the pools' capacities and the plan's time 0, each pool's capacity over time that other runs leave
    and how many of their components that is (the pool calendar)."""
    check_run_options(policy, mode)
    pools, known = pools if pools is not None else run_pools(mode, local_pool)
    capacities = {name: pool.capacity() for name, pool in pools.items()}
    if policy == "plan":
        asked = time.time()
        steps, count = busy(capacities, asked) if busy is not None else ({}, 0)
        # Into the shared calendar, a run plans holding the one planning slot every run of
        # a burst waits for: its solve is capped (re-planning keeps the plan current anyway).
        limit = SHARED_PLAN_SECONDS if busy is not None else None
        pp = make_plan(
            pipeline,
            mode,
            pools=(pools, known),
            steps=steps,
            params=params,
            refresh=refresh,
            time_limit_s=limit,
            inputs=inputs,
        )
        # Time 0 is when the plan is ready, not when it was asked for: the seconds spent
        # reading the history and solving (up to the solver's time limit) are not spent
        # running, and an ETA counted from before them is that much early. (Against the
        # calendar, the plan is that much later than the free time it was fitted into;
        # the run re-plans its waiting components right after, see run_calendar.py.)
        return RunPlan(pools, capacities, pp.assignments, pp, time.time(), count)
    costs = {name: pool.cost_per_hour for name, pool in pools.items()}
    assignments = greedy_assignments(pipeline, capacities, costs, known)
    if mode == "dask":
        require_offered(assignments, worker_offers())
    return RunPlan(pools, capacities, assignments)
