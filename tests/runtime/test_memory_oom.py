"""Learned memory and the OOM escalation policy: pure functions, on recorded payloads
(a real `docker inspect` of a container the kernel killed for memory; a Pod in the
Kubernetes API's shape, as no cluster runs here)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from planflow.runtime.history import Observation
from planflow.runtime.memory import learned, measure_peak, peaks_of, quantile, sane
from planflow.runtime.oom import OomCapError, OomKill, escalate, oom_from_docker_inspect, oom_from_pod

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
KILL = OomKill(where="docker container abc (State.OOMKilled, exit 137)", limit_gib=0.25, exit_code=137)


def test_declared_until_there_is_history_then_a_high_quantile_with_margin():
    assert learned(0.25, []).source == "declared" and learned(0.25, []).gib == 0.25
    figure = learned(0.25, [0.40, 0.38, 0.42, 0.39], q=0.95, margin=1.2)
    assert figure.gib == pytest.approx(0.42 * 1.2)
    assert figure.source == "learned n=4 (p95 x1.2)"


def test_never_below_what_the_last_run_needed():
    figure = learned(0.25, [2.0, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4], q=0.5, margin=1.1)
    assert figure.gib == 2.0 and figure.source == "learned n=11 (last run)"


def test_quantile_is_nearest_rank():
    assert quantile([3.0, 1.0, 2.0], 0.95) == 3.0
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_absurd_history_figures_are_ignored_with_a_warning(caplog):
    seen = [
        Observation("train", "v1", "docker", 1.0, peak_mem_gib=value)
        for value in (0.5, -1.0, float("nan"), 1e9, None, 0.6)
    ]
    with caplog.at_level(logging.WARNING, logger="planflow.memory"):
        assert peaks_of("train", seen, runs=5) == [0.5, 0.6]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3  # -1, nan and 1e9; a missing figure is no warning
    assert "history of 'train': peak_mem_gib=-1.0 is ignored" in warnings[0]
    assert not sane("train", None)


def test_this_process_measures_its_own_peak():
    before = measure_peak().gib
    held = bytearray(64 * 2**20)
    held[::4096] = b"\x01" * len(held[::4096])
    after = measure_peak()
    assert after.how == "peak RSS"  # not in a container
    assert after.gib >= before and after.gib >= 64 / 1024


def test_docker_inspect_of_a_real_oom_kill():
    (container,) = json.loads((FIXTURES / "docker_inspect_oomkilled.json").read_text())
    kill = oom_from_docker_inspect(container)
    assert kill is not None and kill.exit_code == 137 and kill.limit_gib == 64 / 1024
    assert kill.where.endswith("(State.OOMKilled, exit 137)"), kill.where
    # OOMKilled with the main process's own exit: a process inside it was killed
    inner = oom_from_docker_inspect({**container, "State": {**container["State"], "ExitCode": 0}})
    assert inner.where.endswith(
        "(State.OOMKilled, a process in it was killed for memory; the container's main process exited 0)"
    )
    container["State"]["OOMKilled"] = False  # exit 137 alone (e.g. docker kill) is not an OOM kill
    assert oom_from_docker_inspect(container) is None


def test_kubernetes_pod_oomkilled_reason():
    pod = json.loads((FIXTURES / "kubernetes_pod_oomkilled.json").read_text())
    kill = oom_from_pod(pod)
    assert kill is not None and kill.limit_gib == 0.25 and kill.exit_code == 137
    assert kill.where.startswith("kubernetes pod hungry-job-x7k2p container prefect-job (reason OOMKilled")
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "Error"
    assert oom_from_pod(pod) is None


def test_escalation_doubles_then_moves_to_a_bigger_pool_then_stops_at_the_cap():
    pools = {"docker": 0.5, "big": 4.0, "local-gpu-only": 0.25}
    first = escalate("hungry", KILL, 0.25, "docker", 0, pools, factor=2, cap_gib=64, max_retries=3)
    assert (first.mem_gib, first.pool, first.retry, first.moved) == (0.5, "docker", 1, False)
    second = escalate("hungry", KILL, 0.5, "docker", 1, pools, factor=2, cap_gib=64, max_retries=3)
    assert (second.mem_gib, second.pool, second.moved) == (1.0, "big", True)
    capped = escalate("hungry", KILL, 2.0, "big", 2, pools, factor=4, cap_gib=3.0, max_retries=3)
    assert capped.mem_gib == 3.0  # the cap, below the factor's 8
    with pytest.raises(OomCapError) as caught:
        escalate("hungry", KILL, 3.0, "big", 3, pools, factor=2, cap_gib=3.0, max_retries=5)
    message = str(caught.value)
    assert "component 'hungry' was killed for memory" in message and "at its limit of 3 GiB" in message
    assert "peak seen: at least 3 GiB (its limit)" in message
    assert "PlannerSettings.oom_max_mem_gib=3" in message and "Fix:" in message


def test_escalation_stops_after_max_retries():
    with pytest.raises(OomCapError, match=r"oom_max_retries=2"):
        escalate("hungry", KILL, 1.0, "big", 2, {"big": 64.0}, factor=2, cap_gib=64, max_retries=2)


def test_the_plan_uses_the_learned_memory_and_says_so():
    from planflow.planner import PlannerOptions
    from planflow.runtime.memory import MemoryFigure
    from planflow.runtime.planning import PoolError, plan_pipeline
    from planflow.runtime.reporting import plan_rows

    from tests.fixtures.toy_dags import diamond

    memory = {"total": MemoryFigure(0.6, "learned n=3 (p95 x1.2)")}
    capacities = {"local": {"cpu": 4.0, "gpu": 0.0, "mem_gib": 1.0}}
    pp = plan_pipeline(diamond, capacities, {}, PlannerOptions(), memory=memory)
    assert pp.assignments["total"].demand["mem_gib"] == 0.6  # what the job variables get
    assert pp.assignments["numbers"].demand["mem_gib"] == 0.25
    rows = {r["component"]: r for r in plan_rows(pp)}
    assert rows["total"]["mem_from"] == "learned n=3 (p95 x1.2)" and rows["numbers"]["mem_from"] == "declared"
    with pytest.raises(PoolError, match="step 'total' needs cpu=1, gpu=0, mem_gib=2"):
        plan_pipeline(diamond, capacities, {}, PlannerOptions(), memory={"total": MemoryFigure(2.0, "learned n=1")})


def test_the_summary_and_the_metrics_carry_the_measured_memory():
    from planflow import Pipeline, component
    from planflow.monitoring.metrics import RunRecorder
    from planflow.runtime.dispatch import StepRecord
    from planflow.runtime.reporting import summary_rows

    @component(mem_gib=0.25)
    def hungry() -> int:
        return 1

    @component(mem_gib=0.5)
    def numbers() -> int:
        return 2

    pipeline = Pipeline("oom-summary", [hungry, numbers])
    record = StepRecord("hungry", "docker", "Completed", 0.0, 3.0, peak_mem_gib=0.3841, oom_kills=1, mem_limit_gib=0.5)
    plain = StepRecord("numbers", "local", "Completed", 0.0, 1.0)
    rows = summary_rows(pipeline, {"hungry": record, "numbers": plain}, ["hungry", "numbers"])
    assert rows[0]["declared_mem_gib"] == 0.25 and rows[0]["peak_mem_gib"] == 0.3841
    assert rows[0]["oom_kills"] == 1 and rows[0]["mem_limit_gib"] == 0.5
    assert rows[1]["peak_mem_gib"] is None and rows[1]["oom_kills"] == "-"  # nothing measured: a dash
    assert [list(row) for row in rows] == [list(rows[0])] * 2  # one set of columns: a table's are its first row's
    assert list(rows[0])[-1] == "key_metric"
    killed_later = StepRecord("numbers", "docker", "Completed", 0.0, 1.0, oom_kills=2, mem_limit_gib=1.0)
    plain_first = StepRecord("hungry", "local", "Completed", 0.0, 1.0)
    rows = summary_rows(pipeline, {"hungry": plain_first, "numbers": killed_later}, ["hungry", "numbers"])
    assert rows[0]["oom_kills"] == "-" and rows[1]["oom_kills"] == 2  # a later row's column is in the first too
    recorder = RunRecorder("oom-demo")
    recorder.memory("hungry", "docker", 0.5, 2)
    labels = {"pipeline": "oom-demo", "component": "hungry", "pool": "docker"}
    assert recorder.registry.get_sample_value("planflow_component_peak_memory_bytes", labels) == 2**29
    assert recorder.registry.get_sample_value("planflow_component_oom_kills_total", labels) == 2


def test_at_the_cap_the_error_names_the_peak_measured_at_the_kill_and_a_fix_that_holds_it():
    """The SRE trial: killed at 0.953 GiB with a measured peak of 2.93 GiB, after its runs
    again were used up, the error said "peak seen: at least 0.953 GiB (its limit)" and
    "add a ResourcePool with mem_gib >= 1.91", below the peak, where the pool had 23.5."""
    watched = OomKill(
        "process pool child pid 7 (planflow's memory watchdog: the component's peak RSS 2.93 GiB > mem_limit "
        "0.953 GiB, SIGKILL)",
        limit_gib=0.953,
        exit_code=-9,
        peak_gib=2.93,
    )
    with pytest.raises(OomCapError) as caught:
        escalate("crunch", watched, 0.953, "local", 3, {"local": 23.5}, factor=2, cap_gib=1.0, max_retries=3)
    message = str(caught.value)
    assert "peak seen: 2.93 GiB when it was killed" in message
    assert "oom_max_retries=3" in message and "raise PlannerSettings.oom_max_retries" in message
    assert "declare mem_gib >= 3.52 for it" in message  # the peak and a fifth more, not the next step's 1.91
    assert "raise PlannerSettings.oom_max_mem_gib to >= 3.52" in message  # the cap of 1 is below it
    assert "add a ResourcePool" not in message  # 'local' holds 23.5 GiB
    # no pool holds what it needs: declaring alone would not do
    with pytest.raises(OomCapError) as small:
        escalate("crunch", watched, 2.0, "local", 1, {"local": 2.0}, factor=2, cap_gib=64, max_retries=3)
    assert "the largest pool that may run it, 'local', has 2 GiB" in str(small.value)
    assert "declare mem_gib >= 4 for it (its runs then start there) and add a ResourcePool with mem_gib >= 4" in (
        str(small.value)
    )
