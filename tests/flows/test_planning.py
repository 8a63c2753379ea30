"""Planning a pipeline: problem building, estimates learned from history, plan order."""

from __future__ import annotations

import pytest
import toy_dags

from planflow import to_flow
from planflow.core.component import component
from planflow.core.pipeline import Pipeline
from planflow.planner import PlannerOptions, plan_violations
from planflow.runtime.history import Estimate, estimate
from planflow.runtime.planning import PoolError, build_problem, make_plan, plan_pipeline

CAPACITY = {"cpu-pool": {"cpu": 2.0, "gpu": 0.0, "mem_gib": 8.0}, "gpu-pool": {"cpu": 4.0, "gpu": 1.0, "mem_gib": 16.0}}


def _on_docker(x: int = 1) -> int:
    return x


def test_estimate_prefers_the_median_of_history_over_the_declaration():
    history = {("train", "gpu-pool"): [4.0, 100.0, 5.0]}  # one outlier does not move a median
    assert estimate(30, False, history, "train", "gpu-pool") == Estimate(5.0, "history: median of 3 runs")
    assert estimate(30, True, history, "train", "cpu-pool") == Estimate(30, "declared for this pool")
    assert estimate(0.001, False, {}, "x", "p").seconds == 0.05  # plans need positive durations


def test_problem_has_one_mode_per_usable_pool_with_its_duration():
    train = component(toy_dags.total.fn, name="total", cpu=1, est_seconds=20, est_seconds_by_pool={"gpu-pool": 4})
    pipeline = Pipeline("two-pools", [toy_dags.numbers, train])
    problem, estimates = build_problem(pipeline, CAPACITY, {"gpu-pool": 2.0})
    task = {t.name: t for t in problem.tasks}["total"]
    assert {m.pool: m.duration for m in task.modes} == {"cpu-pool": 20, "gpu-pool": 4}
    assert task.after == ("numbers",)
    assert estimates[("total", "gpu-pool")].source == "declared for this pool"


def test_plan_uses_the_faster_pool_and_orders_release_by_planned_start():
    train = component(toy_dags.total.fn, name="total", cpu=1, est_seconds=20, est_seconds_by_pool={"gpu-pool": 4})
    pipeline = Pipeline("two-pools", [toy_dags.numbers, train, toy_dags.scaled, toy_dags.report])
    problem, _ = build_problem(pipeline, CAPACITY, {})
    pp = plan_pipeline(pipeline, CAPACITY, {}, PlannerOptions(time_limit_s=5))
    assert pp.plan["total"].pool == "gpu-pool"
    assert plan_violations(problem, pp.plan) == []
    priorities = [pp.assignments[s].priority for s in pp.plan.order()]
    assert priorities == sorted(priorities)
    assert pp.assignments["report"].planned_start >= pp.plan["total"].finish


def test_an_impossible_demand_never_reaches_the_solver():
    huge = component(toy_dags.total.fn, name="total", cpu=64, est_seconds=1)
    with pytest.raises(PoolError, match="step 'total' needs cpu=64, gpu=0, mem_gib=1 but fits no pool"):
        plan_pipeline(Pipeline("huge", [toy_dags.numbers, huge]), CAPACITY, {}, PlannerOptions())


@pytest.mark.usefixtures("registered_blocks")
def test_estimates_are_learned_from_earlier_runs():
    pipeline = toy_dags.diamond
    flow = to_flow(pipeline)
    flow(n=2)
    flow(n=2)
    after = make_plan(pipeline)
    source = after.source_of("total")
    assert source.startswith("history: median of"), source
    runs = int(source.split()[-2])
    assert runs >= 2
    # the median of what the dispatcher recorded for the two runs (total sleeps 0.1 s;
    # the figure adds the orchestration around it), not the declared 0.2 s
    import statistics

    from planflow.runtime.history import observations

    samples = [o.seconds for o in observations(pipeline.steps["total"].component, 10) if o.pool == "local"]
    assert len(samples) >= 2 and all(0.1 <= v < 5 for v in samples), samples
    assert after.plan["total"].duration == pytest.approx(statistics.median(samples[:runs]), abs=1e-6)
    assert after.source_of("scaled").startswith("history")


def test_work_pools_left_out_of_a_distributed_plan_are_said_in_one_line(monkeypatch, caplog):
    """Each distributed run said every unready work pool's whole fix text as a warning of
    its own (docker and kubernetes, which `workpools apply` creates, in every run): one
    line now, each pool with what it lacks in a few words, and where to read the rest.
    (readiness itself is read from a real server in tests/deployments.)"""
    import logging

    from planflow.prefect.blocks.resource_pool import ResourcePool
    from planflow.runtime import planning

    pools = {name: ResourcePool(work_pool=name, cpu=1, mem_gib=1) for name in ("local-process", "docker", "kubernetes")}
    problems = {
        "docker": [
            "no deployment 'run-component/docker'. Fix: add to your prefect.yaml ...",
            "work pool 'docker' has no worker running; its flow runs wait. Start one with: ...",
        ],
        "kubernetes": ["work pool 'kubernetes' has no worker running; ...; PAUSED: its flow runs wait ..."],
    }
    monkeypatch.setattr(planning, "readiness", lambda work_pools: ({}, problems))
    with caplog.at_level(logging.WARNING, logger="planflow"):
        usable, known = planning.run_pools("distributed", "local", pools)
    assert set(usable) == {"local-process"}
    # a step that may run only on a pool left out is told why, and what to look at
    pinned = component(_on_docker, cpu=1, est_seconds=1, pools=["docker"])
    with pytest.raises(planning.PoolError) as refused:
        planning.allowed_pools(Pipeline("on-docker", [pinned]), {"local-process": {"cpu": 1, "mem_gib": 1}}, known)
    assert (
        "and this run leaves 'docker' out: its work pool 'docker' is not ready (no component deployment, no "
        "worker). Fix: planflow workpools status docker says what it needs"
    ) in str(refused.value), refused.value
    said = [r.getMessage() for r in caplog.records if "left out of the plan" in r.getMessage()]
    assert said == [
        "left out of the plan: work pool 'docker' (no component deployment, no worker), work pool 'kubernetes' "
        "(no worker, paused) (what each needs: planflow workpools status POOL)"
    ], said
