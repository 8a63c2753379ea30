"""What a component costs beside its work: batched reporting, no tags of planflow's own on
its task run, a run's shared slots taken in few requests (real Prefect server). Behaviour
only; the timings are bench/bench_overhead.py's."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import toy_dags
from prefect import tags
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from prefect.context import TagsContext
from prometheus_client import CollectorRegistry

from planflow import to_flow
from planflow.core.component import component
from planflow.monitoring.metrics import RunRecorder
from planflow.ops.processes import wait_until
from planflow.planner import PlannerOptions
from planflow.prefect.limits import active_slots, limit_name
from planflow.runtime import history, reporting
from planflow.runtime.dispatch import Assignment, StepRecord, dispatch
from planflow.runtime.events import EventBus, Reporter, RunInfo
from planflow.runtime.planning import RunPlan, plan_pipeline
from planflow.runtime.reporters import MetricsReporter
from planflow.runtime.run_slots import RunSlots
from planflow.runtime.slot_wake import announce_taken

from tests.flows.own_pool import own_pool

POOL = "overhead-duo"
CAPACITY = {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}
CPU, MEM = limit_name(POOL, "cpu"), limit_name(POOL, "mem_gib")
LOCAL = {"local": {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}}


# -- reporting: batched, complete at the end ------------------------------------------------
class CountingRecorder(RunRecorder):
    pushes = 0

    def push(self) -> None:
        self.pushes += 1


class Flushes(Reporter):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.flushes: list[int] = []  # how many step events had arrived at each flush

    def on_step(self, event) -> None:
        self.events.append(event.kind)

    def flush(self) -> None:
        self.flushes.append(len(self.events))


def _diamond() -> RunInfo:
    pp = plan_pipeline(toy_dags.diamond, LOCAL, {}, PlannerOptions(time_limit_s=5))
    plan = RunPlan(pools={}, capacities=LOCAL, assignments=pp.assignments, plan=pp)
    return RunInfo(toy_dags.diamond, dict(toy_dags.diamond.params), "plan", "inprocess", None, plan)


def test_batched_metrics_and_progress_arrive_complete_at_the_end():
    """Flushes at most once a minute: the whole run is one batch, flushed when it ends."""
    run, flushes = _diamond(), Flushes()
    recorder = CountingRecorder("toy-diamond", pushgateway_url=None, registry=CollectorRegistry())
    upstream = {name: run.pipeline.upstream(name) for name in run.pipeline.steps}
    with EventBus([MetricsReporter(recorder), flushes], logging.getLogger("test"), flush_seconds=60) as bus:
        bus.planned(run)
        with ThreadPoolExecutor(4) as pool:
            records, _ = dispatch(
                upstream,
                run.plan.assignments,
                run.plan.capacities,
                lambda step, outputs: pool.submit(lambda: 1),
                lambda kind, record: bus.step(run, kind, record),
            )
        bus.finished(run, records)
    assert flushes.flushes == [8] and recorder.pushes == 1  # one flush, after all 8 step events
    value = recorder.registry.get_sample_value
    for step in run.pipeline.steps:
        key = {"pipeline": "toy-diamond", "component": step, "pool": "local", "state": "completed"}
        assert value("planflow_component_duration_seconds_count", key) == 1.0
    assert value("planflow_pipeline_runs_finished_total", {"pipeline": "toy-diamond", "state": "completed"}) == 1.0


def test_a_bad_flush_interval_is_refused_with_the_value():
    with pytest.raises(ValueError, match=r"flush_seconds=-1: must be a number of seconds >= 0"):
        EventBus([], logging.getLogger("test"), flush_seconds=-1)


# -- a component's task run ----------------------------------------------------------------
def diamond_runs(summary: dict) -> tuple:
    """The flow run of a toy-diamond run and its task runs, once all are on the server
    (task runs reach it as events, a moment after the run's end; 30 s at most)."""
    runs: list = []

    def recorded() -> bool:
        this_run = FlowRunFilter(id=FlowRunFilterId(any_=[summary["flow_run_id"]]))
        with get_client(sync_client=True) as client:
            runs[:] = client.read_task_runs(flow_run_filter=this_run)
        return sorted(r.name for r in runs) == sorted(toy_dags.diamond.steps)

    assert wait_until(recorded, 30), [r.name for r in runs]
    with get_client(sync_client=True) as client:
        return client.read_flow_run(summary["flow_run_id"]), runs


@pytest.mark.usefixtures("registered_blocks")
def test_a_component_task_run_has_no_tags_so_no_tag_concurrency_is_acquired():
    """Prefect 3.8.8 enters `concurrency(["tag:<tag>", ...])` for every tag of a task run
    (task_engine.py): a task run without tags takes no tag slots at all."""
    summary = to_flow(toy_dags.diamond)()
    flow_run, runs = diamond_runs(summary)
    assert all(r.tags == [] for r in runs), {r.name: r.tags for r in runs}
    assert {"planflow", "pipeline:toy-diamond"} <= set(flow_run.tags)  # what the automations match


@pytest.mark.usefixtures("registered_blocks")
def test_a_called_flow_run_is_created_with_its_tags_and_its_task_runs_get_only_the_callers(monkeypatch):
    """A call creates the flow run with `planflow` and `pipeline:<name>` (no request to add
    them at its start); the task runs get what the caller's `with tags(...)` gives, as in any
    Prefect flow, and none of planflow's."""
    updates: list = []
    original = SyncPrefectClient.update_flow_run
    monkeypatch.setattr(
        SyncPrefectClient, "update_flow_run", lambda self, *a, **k: updates.append(k) or original(self, *a, **k)
    )
    with tags("team-a"):
        summary = to_flow(toy_dags.diamond)()
    flow_run, runs = diamond_runs(summary)
    assert {"planflow", "pipeline:toy-diamond", "team-a"} <= set(flow_run.tags), flow_run.tags
    assert all(r.tags == ["team-a"] for r in runs), {r.name: r.tags for r in runs}
    assert not [u for u in updates if "tags" in u], updates  # created with them: no PATCH to add them
    with tags("team-b"):  # the context is the caller's again after the call
        assert TagsContext.get().current_tags == {"team-b"}


# -- a run's shared slots --------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool(registered_blocks):
    with own_pool(POOL, CAPACITY) as name:
        yield name


def test_a_runs_short_steps_share_one_request_hold_their_slots_while_they_run_and_give_all_back(pool):
    steps = {f"s{i}": Assignment(f"s{i}", POOL, {"cpu": 0.25}, i, 0.0, 0.5) for i in range(6)}
    seen: dict[str, int] = {}

    def work(step: str) -> int:
        seen[step] = active_slots([CPU])[CPU]  # the server counts this step's slots now
        return 1

    with RunSlots() as slots, ThreadPoolExecutor(6) as threads:
        records, _ = dispatch(
            dict.fromkeys(steps, ()), steps, {POOL: CAPACITY}, lambda s, o: threads.submit(work, s), admit=slots
        )
    assert {r.state for r in records.values()} == {"Completed"}
    assert slots.requests == 1  # six steps, one increment
    assert all(n >= 250 for n in seen.values()), seen
    deadline = time.monotonic() + 30
    while active_slots([CPU])[CPU] and time.monotonic() < deadline:  # given back by its thread, then joined
        time.sleep(0.1)
    assert active_slots([CPU]) == {CPU: 0}


def test_a_step_refused_one_limit_holds_none_of_the_others(pool):
    """All or none, batched or not: no run holds cpu while it waits for memory."""
    hog = RunSlots()
    with hog, RunSlots() as slots:
        assert hog.take(Assignment("hog", POOL, {"mem_gib": 4}, 0)) is not None
        step = Assignment("s", POOL, {"cpu": 1, "mem_gib": 1}, 0, 0.0, 0.5)
        slots.prepare([step])
        assert slots.take(step) is None
        assert active_slots([CPU, MEM]) == {CPU: 0, MEM: 4096}
    assert hog.wait_closed() and slots.wait_closed()  # the last leases go back after the run, off its path
    assert active_slots([CPU, MEM]) == {CPU: 0, MEM: 0}


def looks(slots: RunSlots) -> int:
    """The limits a run looked at: read from the server, or another run's read on this
    machine taken instead (a test of this module just before may have left one)."""
    return slots.reads + slots.reads_shared


@pytest.fixture(params=["heard", "not heard"])
def hearing(request, monkeypatch) -> bool:
    """Whether the runs hear this machine's takes and give-backs with their counts
    (slot_wake.py), as they do by default, or not (PLANFLOW_SLOT_WAKE=false; as runs on
    other machines are not heard). A read stands long enough for a slow machine."""
    from planflow.runtime import run_slots

    monkeypatch.setattr(run_slots, "SEEN_WOKEN_SECONDS", 30.0)
    if request.param == "not heard":
        monkeypatch.setenv("PLANFLOW_SLOT_WAKE", "false")
    return request.param == "heard"


def test_steps_waiting_for_a_full_pool_ask_the_server_once_per_round_not_once_each(pool, monkeypatch, hearing):
    """Five ready one-core steps, the pool held by another run. Heard (the other run is on
    this machine): the read at hand says the pool is full, kept up to date by the take it
    heard, and nobody asks (an increment is a write, refused or not). Not heard: one
    request per round (the others would be refused as well): a refused increment, then,
    once refused, a read of the limit instead. A step that needs less looks again and
    asks only if the read says it fits."""
    from planflow.runtime import slot_claims

    monkeypatch.setattr(slot_claims, "CLAIM_AFTER_SECONDS", 1e9)  # no claim however slow the machine
    monkeypatch.setattr(slot_claims, "TURN_LOOK_SECONDS", 1e9)  # the pool's turn read once, however slow
    asked = 0 if hearing else 1
    hog = RunSlots()
    with hog, RunSlots() as slots:
        assert slots._hears_counts() is hearing
        assert hog.take(Assignment("hog", POOL, {"cpu": 2}, 0)) is not None
        ready = [Assignment(f"s{i}", POOL, {"cpu": 1}, i) for i in range(5)]
        for _ in range(2):  # two rounds of the dispatcher
            slots.prepare(ready)
            assert [slots.take(a) for a in ready] == [None] * 5
        # reads: the pool's turn (its cores with it; not heard: made stale by the refusal, then the cores)
        assert (slots.requests, slots.refusals) == (asked, asked)
        assert looks(slots) == 2, looks(slots)
        slots.prepare(ready)
        small = Assignment("small", POOL, {"cpu": 0.5}, 9)
        assert slots.take(ready[0]) is None and slots.take(ready[1]) is None
        assert slots.take(small) is None  # it misses fewer slots than were refused: it looks again
        assert (slots.requests, slots.refusals) == (asked, asked)  # no write the read said would fail
        assert 2 <= looks(slots) <= 3  # the cores read again, or the read of round 2 still stands
    assert hog.wait_closed() and slots.wait_closed()
    assert active_slots([CPU, MEM]) == {CPU: 0, MEM: 0}


def test_short_steps_waiting_for_a_full_pool_stop_asking_for_a_batch_the_server_refused(pool, monkeypatch, hearing):
    """Planned short, the steps' slots are asked for as one batch. Heard: the read at hand
    says the pool is full, and the batch is not asked for. Not heard: once refused, the
    next rounds read the limit (one read per round) and ask for nothing while it is full."""
    from planflow.runtime import slot_claims

    monkeypatch.setattr(slot_claims, "CLAIM_AFTER_SECONDS", 1e9)
    monkeypatch.setattr(slot_claims, "TURN_LOOK_SECONDS", 1e9)  # the pool's turn read once, however slow
    asked = 0 if hearing else 1
    hog = RunSlots()
    with hog, RunSlots() as slots:
        assert hog.take(Assignment("hog", POOL, {"cpu": 2}, 0)) is not None
        ready = [Assignment(f"s{i}", POOL, {"cpu": 1}, i, 0.0, 0.5) for i in range(5)]
        slots.prepare(ready)  # the batch: refused (not heard), or not asked for (heard)
        assert [slots.take(a) for a in ready] == [None] * 5  # the first step: a read says full, no ask
        assert (slots.requests, slots.refusals) == (asked, asked)
        assert looks(slots) == 2, looks(slots)
        slots.prepare(ready)  # no batch this time
        assert [slots.take(a) for a in ready] == [None] * 5
        assert (slots.requests, slots.refusals) == (asked, asked) and looks(slots) in (2, 3)  # read again, or it stands
    assert hog.wait_closed() and slots.wait_closed()
    assert active_slots([CPU, MEM]) == {CPU: 0, MEM: 0}


def test_a_limit_read_by_one_run_stands_for_this_machines_other_runs_kept_up_to_date_by_what_they_announce(pool):
    """Runs on one machine share their reads of a limit (shared_reads.py): a read one run
    made is taken by another as its own while it is as fresh, and the slots taken or given
    back on this machine, announced with their counts (slot_wake.py), are counted into
    every run's read without reading it again. An announcement without a count (an older
    planflow's) makes the read stale, as before."""
    with RunSlots() as a, RunSlots() as b:
        assert a._wake is not None and a._wake.path is not None, "no private folder for this machine's runs"
        announce_taken(CPU)  # no count: what a test before left is stale for both
        first = a.limit_now(CPU, woken=True)
        assert b.limit_now(CPU, woken=True) == first and first.active_slots == 0
        assert (a.reads, b.reads, b.reads_shared) == (1, 0, 1)
        hog = RunSlots()
        with hog:
            held = hog.take(Assignment("hog", POOL, {"cpu": 1}, 0))
            assert held is not None
            # the take, heard with its count, is in both runs' reads: nobody read again
            assert b.limit_now(CPU, woken=True).active_slots == 1000
            assert a.limit_now(CPU).active_slots == 1000  # a claim's read too
            assert (a.reads, b.reads) == (1, 0)
            assert active_slots([CPU]) == {CPU: 1000}  # as the server holds it
            held.close()
        assert hog.wait_closed()  # its lease given back, and announced with its count
        assert a.limit_now(CPU, woken=True).active_slots == 0 and b.limit_now(CPU).active_slots == 0
        assert (a.reads, b.reads) == (1, 0)
        announce_taken(CPU)  # no count: stale again, read again
        assert a.limit_now(CPU, woken=True).active_slots == 0 and a.reads == 2


def test_one_read_of_a_pools_limit_brings_its_other_limits_as_they_are_then(pool):
    """A waiting run reads its pool's memory, cores and turn within one round: the first
    read brings all of them (one request), each as the server held it then, for this run
    and for this machine's other runs; a limit of no pool is read by its name."""
    from planflow.prefect.limits import PLANNING_LIMIT, turn_limit

    with RunSlots() as hog, RunSlots() as a, RunSlots() as b:
        held = hog.take(Assignment("hog", POOL, {"cpu": 1, "mem_gib": 1}, 0))
        assert held is not None
        announce_taken(CPU)  # what a test before left is stale for both
        assert a.limit_now(MEM).active_slots == 1024
        assert a.limit_now(CPU).active_slots == 1000
        assert a.limit_now(turn_limit(POOL), woken=True).active_slots == 0
        assert a.reads == 1  # one request brought the three
        assert b.limit_now(CPU, woken=True).active_slots == 1000 and (b.reads, b.reads_shared) == (0, 1)
        assert a.limit_now(PLANNING_LIMIT).limit == 1 and a.reads == 2
        assert a.limit_now("planflow-no-such-pool-cpu-millicores") is None and a.reads == 3
        held.close()
    assert hog.wait_closed()
    assert active_slots([CPU, MEM]) == {CPU: 0, MEM: 0}


def test_a_batch_asks_first_for_the_limit_that_refused_the_run_lately_and_for_the_others_only_if_granted(
    pool, monkeypatch
):
    """Side by side, a batch's memory was granted beside its refused cores and given back
    at once, round after round (336 memory increments granted against 72 of cores in one
    fleet burst). Now the limit that refused the run lately is asked alone first. The hog
    as if on another machine (not heard: a read at hand would say the pool is full, and
    nothing would be asked)."""
    from planflow.runtime import slot_claims

    monkeypatch.setattr(slot_claims, "CLAIM_AFTER_SECONDS", 1e9)
    monkeypatch.setenv("PLANFLOW_SLOT_WAKE", "false")
    hog = RunSlots()
    with hog, RunSlots() as slots:
        assert hog.take(Assignment("hog", POOL, {"cpu": 2}, 0)) is not None
        ready = [Assignment("s", POOL, {"cpu": 1, "mem_gib": 1}, 0, 0.0, 0.5)]
        slots.prepare(ready)  # nothing refused it yet: cores and memory side by side, the cores refused
        assert (slots.requests, slots.refusals) == (2, 1)
        monkeypatch.setattr(slots, "free_now", lambda name: 1 << 30)  # a read that missed a take elsewhere
        slots.prepare(ready)  # the cores alone, refused again: no memory asked for
        assert (slots.requests, slots.refusals) == (3, 2)
        assert active_slots([CPU, MEM]) == {CPU: 2000, MEM: 0}
    assert hog.wait_closed() and slots.wait_closed()
    assert active_slots([CPU, MEM]) == {CPU: 0, MEM: 0}


def test_leases_given_back_once_the_runs_slot_threads_were_shut_down_still_go_back(pool):
    """A fleet burst saw the releaser die on `cannot schedule new futures after shutdown`
    with a claim's turn in hand: the pool's turn stayed held until its lease ran out, and
    no run could claim for 70 s. Leases given back then go back one by one, inline."""
    with RunSlots() as slots:
        held = [slots._increment(CPU, 500), slots._increment(MEM, 512)]
        assert active_slots([CPU, MEM]) == {CPU: 500, MEM: 512}
        with slots._lock:
            for lease in held:
                slots._leases.remove(lease)
        slots._threads_pool.shutdown()
        slots._release_all(held, warn_when="in this test", here=False)  # to the server, not left here
        assert active_slots([CPU, MEM]) == {CPU: 0, MEM: 0}
    assert slots.wait_closed()


def test_a_batch_asks_for_no_more_than_its_limit_has(pool):
    """Five short one-core steps on a free two-core pool: the batch asks for two cores
    (five, more than the limit, the server refuses however free it is), two steps start."""
    with get_client(sync_client=True) as client:
        limits = {CPU: client.read_global_concurrency_limit_by_name(CPU)}
    with RunSlots(limits=limits) as slots:
        ready = [Assignment(f"s{i}", POOL, {"cpu": 1}, i, 0.0, 0.5) for i in range(5)]
        slots.prepare(ready)
        held = [slots.take(a) for a in ready]
        assert [h is not None for h in held] == [True, True, False, False, False]
        # the batch; the third step's read at hand, brought up to date by the batch's grant
        # (heard), says the pool is full: not asked (before, a refused increment)
        assert (slots.requests, slots.refusals) == (1, 0)
        for h in held[:2]:
            h.close()
    assert slots.wait_closed() and active_slots([CPU]) == {CPU: 0}


# -- the run's end and its records ---------------------------------------------------------
class Meets(Reporter):
    """Its on_finished returns only once every Meets of the run has entered its own."""

    def __init__(self, barrier) -> None:
        self.barrier, self.calls = barrier, []

    def on_finished(self, run, records) -> None:
        self.calls.append("on_finished")
        self.barrier.wait(timeout=20)  # BrokenBarrierError when they do not run side by side

    def flush(self) -> None:
        self.calls.append("flush")


def test_the_reporters_finish_side_by_side_each_in_order_with_one_last_flush():
    barrier = threading.Barrier(2)
    reporters = [Meets(barrier), Meets(barrier)]
    bus = EventBus(reporters, logging.getLogger("test"), flush_seconds=60)
    with bus:
        bus.finished(_diamond(), {})
    assert not bus.failures, bus.failures  # neither waited alone until its barrier broke
    assert [r.calls for r in reporters] == [["on_finished", "flush"]] * 2


def test_the_gantt_picture_is_a_png_that_draws_the_actual_bars():
    run = _diamond()
    records = {s: StepRecord(s, "local", "Failed" if s == "report" else "Completed", 0.1, 0.4) for s in run.plan.order}
    png = reporting.gantt_png(run.plan.plan, records, title="toy")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert reporting.gantt_png(run.plan.plan) != png  # the actual bars are drawn


@pytest.mark.usefixtures("registered_blocks")
def test_a_batch_of_one_components_runs_is_one_record_read_back_newest_first_once_per_plan():
    def noop(x: int = 1) -> int:
        return x

    comp = component(noop, name=f"overhead-batch-{time.time_ns()}")
    batch = [history.Observation(comp.name, comp.code_version, "local", s) for s in (1.0, 2.0, 3.0)]
    history.record_many(batch)
    history.record(history.Observation(comp.name, comp.code_version, "local", 4.0))
    with get_client(sync_client=True) as client:
        key = history.history_key(comp.name, comp.code_version)
        stored = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert len(stored) == 2  # the batch is one record
    assert [o.seconds for o in history.observations(comp, 10)] == [4.0, 3.0, 2.0, 1.0]
    assert [o.seconds for o in history.observations(comp, 2)] == [4.0, 3.0]
    with history.read_once():
        history.observations(comp, 10)
        history.record(history.Observation(comp.name, comp.code_version, "local", 5.0))
        assert [o.seconds for o in history.observations(comp, 10)][0] == 4.0  # read once in the block
    assert [o.seconds for o in history.observations(comp, 1)] == [5.0]


@pytest.mark.usefixtures("prefect_server")
def test_a_runs_task_threads_start_while_it_reads_and_are_the_flows_own():
    """The flow's task-runner threads are started beside the run's reads (a cProfile of a
    run of 40 trivial components: 33 thread starts, 0.30 s of the dispatcher's 0.51 s), as
    the task runner's own threads (Prefect counts them to tell a nested submit); none
    outside a flow run."""
    from prefect import flow
    from prefect.context import FlowRunContext
    from prefect.task_runners import ThreadPoolTaskRunner

    from planflow.runtime.executors import warm_task_threads

    assert warm_task_threads(4) is None  # no flow run: nothing to warm

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=6))
    def warmed(count: int) -> tuple[int, int]:
        runner = FlowRunContext.get().task_runner
        warming = warm_task_threads(count)
        assert warming is not None
        warming.join(10)
        assert not warming.is_alive()
        return len(runner._executor._threads), len(runner._worker_thread_ids)

    assert warmed(4) == (4, 4)
    assert warmed(40) == (6, 6)  # at most the task runner's workers
