"""Many runs at once on one pool: planflow's shared pools versus Prefect's default.

A burst of runs (the three example pipelines and the dispatch benchmark's pipeline,
mixed; 8 by default) is submitted together, through deployments, to one process work
pool served by one process worker that accepts them all. Every run is in-process on the
same planflow pool of 2 cores and 3 GiB (`bench-small`). Two policies alternate, in one
benchmark process:

- planflow: policy "plan", the pools shared between runs (PLANFLOW_SHARED_SLOTS=true:
  the global-concurrency-limit ledger and the pool calendar, where the dispatcher has
  them);
- default: what Prefect does with no shared ledger: policy "fifo", each run believing it
  has the pool to itself (PLANFLOW_SHARED_SLOTS=false).

What it measures is whatever the dispatcher does, read back from the runs' own records
on the server: each component's task run (its Running interval) with the demand its
component declares gives `capacity_violations` (instants when the running demand of
all runs exceeds the pool's capacity); the global concurrency limits, sampled while the
burst runs, give the ledger's own view (`ledger_over_limit_samples`); the makespan is
from submission to the last run's end; each run's ETA is read from its plan
(`eta_ratio` = actual time to finish / the time its ETA promised, from submission). A
warm-up run of each pipeline first gives the history its durations (the default's runs
teach it nothing: PLANFLOW_LEARN_DURATIONS=false, as they oversubscribe the pool). Each burst also
keeps a `trace`: when the first and last run started and the first component, the
seconds the pool stood idle between the first start and the last end, and the share of
the pool's cpu the running components declared (where a policy loses its time).

Then per database, SQLite and PostgreSQL (`planflow server up --db postgres`), the same
bursts, and the latency of creating each run of a burst from its deployment
(`run_create_p95_s`).

The workload (`--workload`): `honest` (default) runs the examples' graphs and
declarations with each component's body CPU-bound work of exactly its declared cores
(fleet_flows.py: oversubscribing a pool then only stretches the work, it cannot overlap
waits); `real` runs the examples' own steps. Each burst also gives the makespan's lower
bound (declared cpu x duration over the pool's cores, with the burst's durations and
with the warm-up's, i.e. the work alone), the share of the pool's cpu in use over the
makespan, the seconds components waited once ready (`ready_wait_s`) and the part of it
with room for them on the pool (`idle_wait_s`: lost to the dispatcher), each run's
actual/ETA in the order the runs were planned, and every component's interval. And the
machine's CPU over the burst (`machine_cpu_s`, its share of all cores), less the work
alone: `orchestration_cpu_s`, what Prefect, the server and planflow's coordination
took from the same cores the components run on; `server_cpu_s` is the Prefect server
process's part of it (the rest: the worker and the flow runs' processes).
`--warm-up-bursts N` runs N planflow bursts first, not counted, so that the history
holds durations as a burst has them.

The benchmark runs in a cgroup of the largest CPU weight (fleet_cgroup.py; where the
cgroup filesystem is writable, else it says it is not confined): everything it starts
gets the machine's cores before any other process, so both policies meet the pool's 2
cores as on an idle machine, and the default cannot take a larger share of a loaded
machine by running more threads than the pool has cores.

Run: `python -m bench.bench_fleet [--rounds 1] [--runs 8] [--db sqlite,postgres]
[--workload honest|real] [--warm-up 1] [--warm-up-bursts 1] [--scale 0.5] [--no-confine]
[--hold-to-calendar]`.
Writes bench/results/fleet.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from operator import itemgetter
from pathlib import Path

from bench.bench_dispatch import CAPACITY, POOL, _units_per_second
from bench.fleet_cgroup import confined
from bench.fleet_measure import (
    MAKESPAN_LINE,
    Interval,
    empty_pool,
    eta_from_plan,
    eta_ratio,
    held_idle,
    lateness,
    lower_bound,
    machine_cpu,
    machine_cpu_seconds,
    over_capacity,
    plan_rows_planned,
    server_cpu_seconds,
    settle,
    trace,
    waits,
)
from bench.fleet_report import POLICIES, RESULTS, summarise, write
from bench.server_requests import count_requests, log_offset, top_routes

ROOT = Path(__file__).resolve().parents[1]
WORK_POOL = "bench-fleet"
WORKLOADS = {  # pipeline (= flow name) -> entrypoint, in the order a burst mixes them
    # the examples' graphs and declarations, each component CPU-bound work as declared (fleet_flows.py)
    "honest": {
        "fraud-risk": "bench/fleet_flows.py:fraud_risk_honest",
        "bench-synthetic-30": "bench/fleet_flows.py:synthetic_honest",
        "image-classification": "bench/fleet_flows.py:image_classification_honest",
        "predictive-maintenance": "bench/fleet_flows.py:predictive_maintenance_honest",
    },
    # the examples' own steps (they use a fraction of the cores they declare: fleet_honesty.py)
    "real": {
        "fraud-risk": "flows/fraud_risk/flow.py:fraud_risk",
        "bench-synthetic-30": "bench/fleet_flows.py:synthetic",
        "image-classification": "flows/image_classification/flow.py:image_classification",
        "predictive-maintenance": "flows/predictive_maintenance/flow.py:predictive_maintenance",
    },
}
ENTRYPOINTS = dict(WORKLOADS["honest"])  # the workload of this benchmark process (main sets it)
CREATE_RETRY_S = 120.0  # how long a run's creation is retried while the server answers 503
RUN_TIMEOUT_S = 1800.0  # a burst that takes longer fails the benchmark, naming the runs


class BenchError(RuntimeError):
    pass


# -- setting up one server ------------------------------------------------------------
def setup(rate: float, scale: float, log: Path) -> tuple[dict[str, str], subprocess.Popen]:
    """Blocks, the work pool, a deployment per pipeline and one process worker."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.flows import Flow

    from planflow.ops.workers import start_worker
    from planflow.prefect.blocks import ensure_defaults

    ensure_defaults()
    planflow = str(Path(sys.executable).with_name("planflow"))
    command = [planflow, "pools", "set", POOL, "--work-pool", WORK_POOL]
    command += ["--cpu", str(CAPACITY["cpu"]), "--mem-gib", str(CAPACITY["mem_gib"])]
    subprocess.run(command, check=True, cwd=ROOT, timeout=120, capture_output=True)
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=WORK_POOL, type="process"), overwrite=True)
    env = {"PYTHONPATH": str(ROOT), "PLANFLOW_BENCH_RATE": f"{rate:.3f}", "PLANFLOW_BENCH_SCALE": f"{scale:g}"}
    deployments = {}
    for name, entrypoint in ENTRYPOINTS.items():
        flow = Flow.from_source(source=str(ROOT), entrypoint=entrypoint)
        deployment_id = flow.deploy(
            name=f"{name}-fleet",
            work_pool_name=WORK_POOL,
            job_variables={"env": env},
            build=False,
            push=False,
            print_next_steps=False,
        )
        deployments[name] = str(deployment_id)
    worker = start_worker(WORK_POOL, log, query_seconds=1.0)
    return deployments, worker


def warm_up(deployments: dict[str, str], declared: dict, runs: int = 1) -> dict[tuple[str, str], float]:
    """`runs` runs of each pipeline alone (policy fifo; not counted): durations for the
    plans' estimates. Returns each component's duration alone in the last one (the work
    itself, for the burst's lower bound)."""
    from prefect.client.orchestration import get_client

    solo: dict[tuple[str, str], float] = {}
    for _ in range(runs):
        for name, deployment_id in deployments.items():
            [(run_id, _, _)] = submit({name: deployment_id}, [name], "fifo", "false")
            if run_id is None:
                raise BenchError(f"the server did not create the warm-up run of {name} within {CREATE_RETRY_S:g} s")
            [run] = wait_final([run_id])
            with get_client(sync_client=True) as client:
                pipeline, found = read_intervals(client, run, declared)
            solo.update({(pipeline, i.component): i.end - i.start for i in found})
            print(f"  warm-up {name}: done", flush=True)
    return solo


# -- one burst ------------------------------------------------------------------------
def submit(
    deployments: dict[str, str], burst: list[str], policy: str, shared: str, hold: bool = False, learn: bool = True
) -> list[tuple[str | None, float, int]]:
    """Create every run of the burst at once (one thread each): (run id, seconds until it
    was created, answers 503 on the way). A server that answers 503 (SQLite busy under
    concurrent writes) is asked again for up to CREATE_RETRY_S: the wait is in the figure;
    a run still not created then has the id None (counted, not waited for)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

    def unavailable(exc: BaseException) -> bool:
        return isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code == 503

    env = {
        "PLANFLOW_SHARED_SLOTS": shared,
        "PLANFLOW_HOLD_TO_CALENDAR": str(hold).lower(),
        # the default's runs, oversubscribing the pool, take 2-3x their time: planflow's plans
        # must not learn from them (a planflow burst after a default one got ETAs 2-3x too long)
        "PLANFLOW_LEARN_DURATIONS": str(learn).lower(),
    }

    def create(name: str) -> tuple[str | None, float, int]:
        started = time.perf_counter()
        retrying = Retrying(
            retry=retry_if_exception(unavailable),
            wait=wait_fixed(0.5),
            stop=stop_after_delay(CREATE_RETRY_S),
            reraise=True,
        )
        try:
            with get_client(sync_client=True) as client:
                for attempt in retrying:
                    with attempt:
                        run = client.create_flow_run_from_deployment(
                            deployments[name],
                            parameters={"policy": policy, "local_pool": POOL},
                            job_variables={"env": env},
                        )
        except PrefectHTTPStatusError as exc:  # still 503 at the bound: a run never created, counted
            print(f"  {name}: not created within {CREATE_RETRY_S:g} s ({exc.response.status_code})", flush=True)
            return None, time.perf_counter() - started, retrying.statistics.get("attempt_number", 1)
        return str(run.id), time.perf_counter() - started, retrying.statistics.get("attempt_number", 1) - 1

    with ThreadPoolExecutor(max_workers=len(burst)) as pool:
        return list(pool.map(create, burst))


def wait_final(run_ids: list[str], timeout: float = RUN_TIMEOUT_S) -> list:
    """The flow runs once all are final; BenchError naming those that are not, at the bound."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)))
            if len(runs) == len(run_ids) and all(r.state and r.state.is_final() for r in runs):
                return runs
            if time.monotonic() > deadline:
                late = [f"{r.name} ({r.state.name if r.state else '?'})" for r in runs if not r.state.is_final()]
                raise BenchError(f"runs not final after {timeout:g} s: {', '.join(late)}")
            time.sleep(1.0)


class LedgerSampler(threading.Thread):
    """Samples every global concurrency limit while a burst runs: how often any held more
    slots than its limit (the shared ledger's own view of a violation)."""

    def __init__(self, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.every, self.stop_event = every, threading.Event()
        self.samples = self.over = 0
        self.limits: set[str] = set()
        self.cpu_held: list[tuple[float, float]] = []  # (unix time, cores the pool's cpu limit held)
        self.turn_held: list[tuple[float, float]] = []  # (unix time, 1 while a step claims the pool's turn)

    def run(self) -> None:
        from prefect.client.orchestration import get_client

        cpu_limit, turn = f"planflow-{POOL}-cpu-millicores", f"planflow-{POOL}-turn"
        with get_client(sync_client=True) as client:
            while not self.stop_event.wait(self.every):
                limits = client.read_global_concurrency_limits(limit=200)
                self.samples += 1
                self.limits |= {lim.name for lim in limits}
                self.over += any(lim.active_slots > lim.limit for lim in limits)
                now = time.time()
                held = [lim.active_slots / 1000 for lim in limits if lim.name == cpu_limit]
                if held:
                    self.cpu_held.append((now, held[0]))
                claimed = [min(1, lim.active_slots) for lim in limits if lim.name == turn]
                if claimed:
                    self.turn_held.append((now, float(claimed[0])))


def demands() -> dict[str, dict[str, dict[str, float]]]:
    """Per pipeline, per component, its declared demand (imported like the worker does)."""
    return {name: {step: s.spec.demand() for step, s in p.steps.items()} for name, p in pipelines().items()}


def pipelines() -> dict:
    """Per pipeline (flow name), the Pipeline object, imported like the worker does."""
    from planflow.core.pipeline import import_object

    found = {}
    for name, entrypoint in ENTRYPOINTS.items():
        path, attribute = entrypoint.split(":")
        found[name] = import_object(f"{path.removesuffix('.py').replace('/', '.')}:{attribute}").pipeline
    return found


def upstreams() -> dict[str, dict[str, tuple[str, ...]]]:
    """Per pipeline, per component, the steps it waits for."""
    return {name: {step: p.upstream(step) for step in p.steps} for name, p in pipelines().items()}


def read_intervals(client, run, declared: dict, wait_s: float = 10.0) -> tuple[str, list[Interval]]:
    """The run's pipeline and each of its components' Running interval (from its task runs).
    A Completed run's task runs reach the server as events, recorded a moment after the
    run's own state: they are read again (up to `wait_s`) until every component has one."""
    from prefect.client.schemas.objects import StateType

    pipeline = client.read_flow(run.flow_id).name
    deadline = time.monotonic() + wait_s
    while True:
        found = _intervals(client, run, declared, pipeline)
        every = {i.component for i in found} >= set(declared[pipeline])
        if every or run.state_type != StateType.COMPLETED or time.monotonic() >= deadline:
            return pipeline, found
        time.sleep(0.5)


def _intervals(client, run, declared: dict, pipeline: str) -> list[Interval]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found = []
    task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])), limit=200)
    for task_run in task_runs:
        # the executor names a component's task run after its step
        component = task_run.name if task_run.name in declared[pipeline] else task_run.name.rsplit("-", 1)[0]
        if task_run.start_time and task_run.end_time and component in declared[pipeline]:
            found.append(
                Interval(
                    str(run.id),
                    component,
                    task_run.start_time.timestamp(),
                    task_run.end_time.timestamp(),
                    declared[pipeline][component],
                )
            )
    return found


def behind_plan(artifacts: list, eta: float, figures: str, found: list, context: dict | None, pipeline: str) -> dict:
    """Where a run fell behind its first plan (its `-plan` table, placed at ETA - makespan)."""
    table = next((a for a in sorted(artifacts, key=lambda a: a.created) if a.key and a.key.endswith("-plan")), None)
    makespan = MAKESPAN_LINE.search(figures)
    if table is None or makespan is None:
        return {"pipeline": pipeline}
    rows = table.data if isinstance(table.data, list) else json.loads(table.data)
    planned = plan_rows_planned(rows, eta - float(makespan.group(1)))
    actual = {i.component: (i.start, i.end) for i in found}
    upstream = (context or {}).get("upstream", {}).get(pipeline, {})
    return {"pipeline": pipeline, **lateness(planned, actual, upstream)}


def burst_figures(
    runs: list,
    submitted: float,
    declared: dict,
    context: dict | None = None,
    cpu_held: list | None = None,
    turn_held: list | None = None,
) -> dict:
    """Violations, makespan and ETA ratios of one burst, from the runs' records; with
    `context` (upstream steps per pipeline, `solo` durations from the warm-up) also the
    lower bounds of the makespan and where the time between components went; with
    `cpu_held` and `turn_held` (the ledger's samples) the cores it held beyond the running
    components, and what it held while the pool stood empty (fleet_measure.empty_pool)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
    )

    intervals, ratios, failed, pipeline_of, by_rank = [], [], [], {}, []
    with get_client(sync_client=True) as client:
        for run in runs:
            pipeline, found = read_intervals(client, run, declared)
            pipeline_of[str(run.id)] = pipeline
            intervals += found
            if run.state.name != "Completed":
                failed.append(f"{pipeline} {run.name}: {run.state.name}")
            plans = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            # the ETA the run first published (re-planning adds `-eta` versions later)
            figures = sorted((a for a in plans if a.key and a.key.endswith("-plan-figures")), key=lambda a: a.created)
            if figures and run.end_time:
                eta = eta_from_plan(str(figures[0].data), figures[0].created.timestamp())
                ratio = eta_ratio(submitted, run.end_time.timestamp(), eta) if eta else None
                if ratio is not None:
                    ratios.append(ratio)
                    behind = behind_plan(plans, eta, str(figures[0].data), found, context, pipeline)
                    by_rank.append((figures[0].created.timestamp(), pipeline, ratio, eta - submitted, behind))
    ranked = sorted(by_rank, key=itemgetter(0))  # in the order the runs were planned
    ends = [r.end_time.timestamp() for r in runs if r.end_time]
    capacity = {"cpu": CAPACITY["cpu"], "mem_gib": CAPACITY["mem_gib"]}
    sweep = over_capacity(intervals, capacity)
    starts = {str(r.id): r.start_time.timestamp() for r in runs if r.start_time}
    context = context or {}
    solo = context.get("solo", {})
    as_solo = [  # the same components with the durations they had alone (warm-up): the work itself
        Interval(i.run, i.component, 0.0, solo.get((pipeline_of[i.run], i.component), i.end - i.start), i.demand)
        for i in intervals
    ]
    bounds = {
        **lower_bound(intervals, capacity),
        "solo_lower_bound_s": lower_bound(as_solo, capacity)["lower_bound_s"],
        "solo_cpu_work_s": lower_bound(as_solo, capacity)["cpu_work_s"],
        **waits(intervals, context.get("upstream", {}), pipeline_of, starts, capacity),
    }
    if ends:  # the pool's declared cpu in use over the whole makespan (from submission)
        bounds["cpu_in_use_share_of_makespan"] = round(
            bounds["cpu_work_s"] / (capacity["cpu"] * (max(ends) - submitted)), 3
        )
    return {
        "capacity_violations": sweep["violations"],
        "seconds_over_capacity": round(sweep["seconds_over"], 2),
        "peak_cpu": sweep["peak_cpu"],
        "peak_mem_gib": sweep["peak_mem_gib"],
        "makespan_s": round(max(ends) - submitted, 2),
        "eta_ratios": [round(r, 3) for r in ratios],
        # in the order the runs were planned: (pipeline, actual / ETA, ETA s from submission)
        "eta_by_plan_order": [[p, round(r, 3), round(e, 1)] for _, p, r, e, _ in ranked],
        # in the same order: where each run fell behind its plan (fleet_measure.lateness)
        "behind_plan": [b for *_, b in ranked],
        "components_seen": len(intervals),
        "trace": {
            **trace(intervals, submitted, list(starts.values()), CAPACITY["cpu"]),
            **bounds,
            **held_idle(cpu_held or [], intervals, turn_held or []),
            **empty_pool(intervals, cpu_held or [], turn_held or []),
        },
        "intervals": [
            [pipeline_of[i.run], i.run[:8], i.component, round(i.start - submitted, 2), round(i.end - submitted, 2)]
            for i in sorted(intervals, key=lambda i: i.start)
        ],
        "run_spans": [
            [
                str(r.id)[:8],
                round(r.start_time.timestamp() - submitted, 2) if r.start_time else None,
                round(r.end_time.timestamp() - submitted, 2) if r.end_time else None,
            ]
            for r in runs
        ],
        "failed_runs": failed,
    }


def run_burst(
    deployments: dict[str, str],
    burst: list[str],
    policy_name: str,
    declared: dict,
    context: dict | None = None,
    hold: bool = False,
) -> dict:
    policy = POLICIES[policy_name]
    sampler = LedgerSampler()
    sampler.start()
    from planflow.settings import StatePaths

    log = StatePaths.discover().log_file
    log_start = log_offset(log)
    submitted, cpu_before, server_before = time.time(), machine_cpu_seconds(), server_cpu_seconds()
    planflow = policy_name == "planflow"
    created = submit(deployments, burst, policy["policy"], policy["shared"], hold and planflow, learn=planflow)
    try:
        runs = wait_final([run_id for run_id, _, _ in created if run_id is not None])
    finally:
        cpu_used, wall = machine_cpu_seconds() - cpu_before, time.time() - submitted
        server_after = server_cpu_seconds()
        sampler.stop_event.set()
        sampler.join(10)
    # the burst's writes after its runs' final states (history, artifacts, slots given
    # back) are its own: counted once the server is quiet, before the next burst starts
    quiet = settle()
    requests = count_requests(log, log_start)
    figures = burst_figures(runs, submitted, declared, context, sampler.cpu_held, sampler.turn_held)
    figures["trace"].update(server_requests=sum(requests.values()), quiet_after_s=_rounded(quiet))
    figures["server_requests_by_route"] = top_routes(requests)
    figures["server_requests_all_routes"] = dict(requests.most_common())  # fleet.json only: every route
    figures["trace"].update(machine_cpu(cpu_used, wall, figures["trace"].get("solo_cpu_work_s", 0.0)))
    if server_before is not None and server_after is not None:
        figures["trace"]["server_cpu_s"] = round(server_after - server_before, 1)
    figures.update(
        policy=policy_name,
        create_s=[round(s, 3) for _, s, _ in created],
        create_503_answers=sum(n for _, _, n in created),
        runs_not_created=sum(run_id is None for run_id, _, _ in created),
        ledger_samples=sampler.samples,
        ledger_over_limit_samples=sampler.over,
        ledger_limits=sorted(sampler.limits),
    )
    return figures


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


# -- the whole benchmark --------------------------------------------------------------
def run_database(server, db: str, args, rate: float, declared: dict, done) -> None:
    """Start the server on `db`, set it up, warm up, and run the alternating bursts;
    `done(figures)` after each burst."""
    from planflow.ops.workers import stop_process

    server.db = db
    server.start()
    worker = None
    try:
        deployments, worker = setup(rate, args.scale, server.home / f"worker-{db}.log")
        context = {"solo": warm_up(deployments, declared, args.warm_up), "upstream": upstreams()}
        names = list(ENTRYPOINTS)
        burst = [names[i % len(names)] for i in range(args.runs)]
        for _ in range(args.warm_up_bursts):  # the history learns durations as a burst has them; not counted
            figures = run_burst(deployments, burst, "planflow", declared, context, args.hold_to_calendar)
            print(f"  warm-up burst: makespan {figures['makespan_s']} s (not counted)", flush=True)
        for round_index in range(args.rounds):
            order = ("planflow", "default") if round_index % 2 == 0 else ("default", "planflow")
            for policy in order:
                figures = run_burst(deployments, burst, policy, declared, context, args.hold_to_calendar)
                figures.update(db=db, round=round_index + 1)
                print(json.dumps({k: v for k, v in figures.items() if k != "eta_ratios"}), flush=True)
                done(figures)
    finally:
        if worker is not None:
            stop_process(worker, timeout=20)
        server.stop()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="bursts per policy and database")
    parser.add_argument("--runs", type=int, default=8, help="runs per burst (at least 8 for the issue's figures)")
    parser.add_argument("--db", default="sqlite,postgres", help="databases, comma-separated: sqlite,postgres")
    parser.add_argument("--warm-up", type=int, default=1, help="uncounted runs of each pipeline alone first")
    parser.add_argument("--results", default=str(RESULTS), help="where fleet.json and fleet.md go")
    parser.add_argument("--warm-up-bursts", type=int, default=1, help="uncounted planflow bursts first")
    parser.add_argument("--scale", type=float, default=0.5, help="work per estimated second (CPU s per core)")
    parser.add_argument(
        "--hold-to-calendar",
        action="store_true",
        help="the planflow runs hold each component to its planned start (PLANFLOW_HOLD_TO_CALENDAR=true)",
    )
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="honest", help="see fleet_flows.py")
    parser.add_argument(
        "--no-confine",
        dest="confine",
        action="store_false",
        help="do not run in a cgroup of the largest CPU weight (fleet_cgroup.py): the makespans then depend on "
        "what else the machine runs",
    )
    args = parser.parse_args(argv)
    databases = [d.strip() for d in args.db.split(",") if d.strip()]
    unknown = sorted(set(databases) - {"sqlite", "postgres"})
    if unknown or args.runs < 1 or args.rounds < 1:
        parser.error(f"--db takes sqlite and/or postgres (got {unknown}); --runs and --rounds >= 1")

    from bench.tempserver import TempServer

    ENTRYPOINTS.clear()
    ENTRYPOINTS.update(WORKLOADS[args.workload])
    os.environ["PLANFLOW_BENCH_SCALE"] = f"{args.scale:g}"
    server = TempServer("fleet")  # before Prefect is imported
    rate = _units_per_second() * args.scale
    declared = demands()
    meta = {
        "pool": {"name": POOL, **CAPACITY},
        "runs_per_burst": args.runs,
        "rounds": args.rounds,
        "databases": databases,
        "pipelines": list(ENTRYPOINTS),
        "workload": args.workload,
        "hold_to_calendar": args.hold_to_calendar,
        "warm_up_runs": args.warm_up,
        "warm_up_bursts": args.warm_up_bursts,
        "scale": args.scale,
        "synthetic_rate_units_per_s": round(rate, 1),
        "cpus": os.cpu_count(),
        "load_start": os.getloadavg()[0],
        "complete": False,
    }
    started, bursts = time.time(), []

    def report(complete: bool = False) -> dict:
        meta.update(complete=complete, load_end=os.getloadavg()[0], seconds=round(time.time() - started))
        figures = {**summarise(bursts, databases), "meta": meta, "bursts": bursts}
        write(figures, Path(args.results))
        return figures

    def done(burst: dict) -> None:
        bursts.append(burst)
        report()

    with confined("planflow-bench-fleet") if args.confine else nullcontext("not confined (--no-confine)") as how:
        meta["cgroup"] = how
        print(how, flush=True)
        for db in databases:
            run_database(server, db, args, rate, declared, done)
    return report(complete=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
