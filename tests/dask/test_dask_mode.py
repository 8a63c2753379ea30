"""Dask mode on a real local cluster (a scheduler and two worker processes offering
resources, tests/dask/conftest.py): an example pipeline completes, the workers'
resources hold, a killed worker's step runs again elsewhere, and bad set-ups are
refused with the fix."""

from __future__ import annotations

import asyncio
import json
import os
import time

import distributed
import pytest
from prefect import flow

from planflow import to_flow
from planflow.core import discovery as registry
from planflow.ops import dask as cluster
from planflow.ops.processes import wait_until
from planflow.ops.server import free_port
from planflow.runtime import dask_submit
from planflow.runtime.dask_cluster import DaskClusterError, DaskResourceError
from planflow.runtime.dask_executor import DaskExecutor
from planflow.runtime.dispatch import Assignment
from planflow.runtime.executors import execute
from planflow.runtime.planning import make_plan
from planflow.runtime.runner import PipelineRunError

from tests.dask import dags
from tests.dask.conftest import ALLOWED_FAILURES, WORKERS

pytestmark = [pytest.mark.usefixtures("dask_cluster"), pytest.mark.slow]

SMALL = {"n_machines": 24, "n_folds": 3, "max_iter": 30, "n_trees": 50}


def test_predictive_maintenance_completes_in_dask_mode():
    pipeline = registry.get("predictive-maintenance")
    result = to_flow(pipeline)(**SMALL, mode="dask", refresh=True)  # computed, not read from another run's cache
    assert result["mode"] == "dask"
    assert {s["state"] for s in result["steps"].values()} == {"Completed"}
    metrics = {k: v for s in result["steps"].values() for k, v in s["metrics"].items()}
    assert metrics["f1"] > 0.5 and metrics["mae_cycles"] < 40  # computed on the workers
    assert metrics["max_jobs_per_shift"] <= 3


def test_a_steps_retries_on_a_worker_are_counted_and_the_history_learns_its_last_attempt():
    """A step whose task failed once and passed 1 s later (Prefect's retry, on the worker)
    was learned at both attempts and the delay (over 1.1 s for a 0.1 s step)."""
    import toy_dags
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    result = to_flow(toy_dags.retried_step)(tag="dask-attempts", mode="dask")
    step = result["steps"]["shaky"]
    assert step["state"] == "Completed" and step["attempts"] == 2, step
    assert step["seconds"] > 1.0  # both attempts and the retry's delay, as the dispatcher saw them

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[result["flow_run_id"]]))
            )

    learned = [a.data for a in asyncio.run(artifacts()) if a.key and a.key.startswith("planflow-history-shaky-")]
    assert len(learned) == 1
    data = learned[0] if isinstance(learned[0], dict) else json.loads(learned[0])
    assert 0.1 <= data["seconds"] < 0.6, data  # the last attempt's time, not the retry's delay


def test_a_step_read_from_the_cache_on_a_worker_is_cached_and_not_learned():
    """A step read back from the cross-run cache on a worker was reported Completed (the
    dispatcher never saw its state), and the history learned its read as its time."""
    import uuid

    x = uuid.uuid4().int % 1_000_000
    first = to_flow(dags.cached)(x=x, mode="dask")
    second = to_flow(dags.cached)(x=x, mode="dask")
    assert first["steps"]["cached_square"]["state"] == "Completed"
    assert second["steps"]["cached_square"]["state"] == "Cached", second["steps"]


def test_each_worker_runs_no_more_than_its_resources_allow():
    """The dispatcher's own ledger is made limitless here, so that only the cluster holds
    the capacities: four cpu=2 steps on two workers of local.cpu=2 run two at a time,
    never two on one worker. What a step ran on its worker is what the history learns
    (`ran_seconds`): its own span, not the wait in the cluster's queue."""
    p = dags.holds
    assignments = {s: Assignment(s, "local", p.steps[s].spec.demand(), priority=i) for i, s in enumerate(p.steps)}
    limitless = {"local": {"cpu": 1e6, "gpu": 1e6, "mem_gib": 1e6}}

    @flow(persist_result=False)
    def holds() -> dict:
        executor = DaskExecutor(p, assignments, {"hold_seconds": 0.4})
        records = execute(executor, p, assignments, limitless, lambda event, record: None)
        assert {r.state for r in records.values()} == {"Completed"}, records
        return {
            step: {**r.result.key_metrics(), "ran": r.ran_seconds, "seconds": r.seconds} for step, r in records.items()
        }

    wall, steady = time.time(), time.monotonic()
    spans = holds()
    # the wall clock (Dask's and the spans') against the monotonic one (the dispatcher's):
    # a clock step (NTP, a VM paused and resumed) makes wall-clock spans meaningless
    clock_stepped = abs((time.time() - wall) - (time.monotonic() - steady)) > 0.2
    by_worker: dict[float, list[tuple[float, float, str]]] = {}
    for step, span in spans.items():
        by_worker.setdefault(span["pid"], []).append((span["start"], span["end"], step))
        assert span["ran"] is not None and span["ran"] <= span["seconds"], span  # never above what the run saw
        if not clock_stepped:
            assert span["ran"] >= span["end"] - span["start"] - 0.01, span
    assert len(by_worker) == WORKERS, by_worker  # the cluster used both workers
    for worker, intervals in by_worker.items():
        intervals.sort()
        for (_, end, _), (start, _, later) in zip(intervals, intervals[1:], strict=False):
            assert start >= end, f"worker {worker} ran two cpu=2 steps at once: {intervals}"
            # released with the others, it waited for the first step on its worker (0.4 s):
            # release to completion counts that wait, the time it ran does not
            if not clock_stepped:
                assert spans[later]["seconds"] - spans[later]["ran"] >= 0.3, spans[later]


def test_unknown_resource_is_refused_at_plan_time():
    with pytest.raises(DaskResourceError) as refused:
        make_plan(dags.too_big_pipeline, mode="dask")
    message = str(refused.value)
    assert "step 'too_big'" in message and "local.mem_gib=3" in message and "--resources" in message


def _pinned(x: int = 1) -> int:
    return x


def test_a_step_pinned_to_a_pool_no_worker_offers_is_refused_naming_dask_up():
    """Its pool's worker had ended (killed): the run was told to use --pool or to add the
    pools the cluster offered to the step's pools, not to start the worker again."""
    from planflow import Pipeline, component
    from planflow.runtime.planning import PoolError

    from tests.flows.own_pool import own_pool

    with own_pool("dask-no-worker", {"cpu": 1.0, "gpu": 0.0, "mem_gib": 1.0}) as name:
        pinned = component(_pinned, cpu=1, mem_gib=0.1, est_seconds=1, pools=[name])
        with pytest.raises(PoolError) as refused:
            make_plan(Pipeline("pinned-without-worker", [pinned]), mode="dask")
    message = str(refused.value)
    assert f"may run only on pools ['{name}'], and this run leaves '{name}' out: no Dask worker" in message, message
    assert "Fix: planflow dask up starts the missing workers" in message and "--pool" not in message, message


def test_unreachable_scheduler_names_the_command_that_starts_one(monkeypatch):
    address = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("PLANFLOW_DASK_ADDRESS", address)
    monkeypatch.setenv("PLANFLOW_DASK_CONNECT_SECONDS", "2")
    with pytest.raises(DaskClusterError) as plan_error:
        make_plan(dags.holds, mode="dask")
    with pytest.raises(DaskClusterError) as run_error:
        DaskExecutor(dags.holds, {}, {}).__enter__()
    for error in (plan_error, run_error):
        assert address in str(error.value) and "planflow dask up" in str(error.value)


def test_a_worker_killed_mid_run_its_step_runs_again_and_the_run_completes(dask_cluster, tmp_path):
    paths, _ = dask_cluster
    result = to_flow(dags.kill_pair)(marker_dir=str(tmp_path), mode="dask")
    assert {s["state"] for s in result["steps"].values()} == {"Completed"}
    pids = [int(line) for line in (tmp_path / "victim.pids").read_text().split()]
    assert len(pids) == 2 and pids[0] != pids[1], pids  # killed once, then re-run by another process
    # the run's log says so (it went on in silence: only the workers' logs told)
    assert wait_until(lambda: _run_logs_with(result["flow_run_id"], "left the cluster unexpectedly"), 30)
    (said,) = _run_logs_with(result["flow_run_id"], "left the cluster unexpectedly")
    assert "while running step(s) victim, which Dask runs again on another worker" in said, said
    # The nanny restarts the killed worker: the next test finds both again.
    assert wait_until(lambda: len(cluster.status(paths).workers) == WORKERS, 60), cluster.status(paths)
    assert os.environ["PLANFLOW_DASK_ADDRESS"] == cluster.status(paths).address


def _run_logs_with(flow_run_id: str, text: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs if text in log.message]


def test_a_step_whose_workers_keep_dying_fails_the_run_naming_that_fate(dask_cluster, tmp_path):
    """Each attempt SIGKILLs its worker: after ALLOWED_FAILURES re-runs the scheduler gives
    up (KilledWorker) and the run fails saying the step's workers died, and where to read why."""
    paths, _ = dask_cluster
    try:
        with pytest.raises(PipelineRunError) as failed:
            to_flow(dags.keeps_dying)(marker_dir=str(tmp_path), mode="dask")
        message = str(failed.value)
        assert "'dies'" in message and "died" in message and ".planflow/dask/" in message, message
        attempts = (tmp_path / "dies.pids").read_text().split()
        assert len(attempts) == ALLOWED_FAILURES + 1, attempts
    finally:  # the nannies restart the killed workers: the next test finds both again
        assert wait_until(lambda: len(cluster.status(paths).workers) == WORKERS, 60), cluster.status(paths)


def test_a_worker_unpickles_a_runs_context_once_for_all_the_steps_it_runs():
    """The run's Prefect context (its flow, with the pipeline and every component: 213 KB
    at 400 components) is unpickled once per run on each worker process, not once per step:
    the steps one worker runs see one flow object, and the next run a new one."""

    def seen() -> dict[int, set[int]]:
        result = to_flow(dags.context_seen)(mode="dask")
        flows: dict[int, set[int]] = {}
        for step in result["steps"].values():
            assert step["state"] == "Completed", step
            flows.setdefault(int(step["metrics"]["pid"]), set()).add(int(step["metrics"]["flow"]))
        return flows

    first, second = seen(), seen()
    assert all(len(ids) == 1 for ids in first.values()), first  # one flow object per worker process
    assert sum(len(ids) for ids in first.values()) <= WORKERS and first
    assert all(not first[pid] & ids for pid, ids in second.items() if pid in first), (first, second)
    # each run's end has the workers drop its context (its flow, pipeline and parameters)
    with distributed.Client(os.environ["PLANFLOW_DASK_ADDRESS"], timeout=30) as client:

        def kept() -> dict[str, int]:
            return client.run(lambda: len(dask_submit._UNPICKLED))

        assert wait_until(lambda: not any(kept().values()), 10), kept()


ELSEWHERE = """
from planflow.core.component import component
from planflow.core.pipeline import Pipeline


def helper() -> int:  # pickled by reference: only a process that imports this module has it
    return 1


@component(cpu=1, mem_gib=0.25, est_seconds=0.2)
def only_here() -> int:  # pickled by value (its module's name is the component's), not `helper`
    return helper()


pipeline = Pipeline("dask-only-here", [only_here], description="code the cluster does not have")
"""


def test_a_scheduler_without_the_projects_code_is_named_not_a_lost_worker(tmp_path, monkeypatch):
    """The components' module imports here but not on the cluster (the session's scheduler
    and workers were started without tmp_path): the scheduler cannot unpickle the step's
    task, and the run fails saying so, with the fix. It said 'cancelled: lost dependencies'
    as a DaskWorkerLost."""
    (tmp_path / "elsewhere_dag.py").write_text(ELSEWHERE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import elsewhere_dag  # noqa: PLC0415 (importable only now)

    with pytest.raises(PipelineRunError) as failed:
        to_flow(elsewhere_dag.pipeline)(mode="dask")
    message = str(failed.value)
    assert "DaskTaskRefused" in message and "DaskWorkerLost" not in message, message
    assert "step 'only_here' before any worker ran it" in message and "deserialization" in message, message
    assert "the scheduler needs the project's code" in message and "PYTHONPATH" in message, message
