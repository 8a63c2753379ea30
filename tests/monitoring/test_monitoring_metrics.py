"""monitoring/metrics.py: the recorder's values, clean expositions, a real Pushgateway."""

from __future__ import annotations

import asyncio
import json
import re
import time
from types import SimpleNamespace
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, generate_latest

from planflow.monitoring.metrics import (
    BridgeMetrics,
    RemediationMetrics,
    RunRecorder,
    metric_catalog,
    pushgateway_url_from_env,
)

from tests.monitoring.helpers import promtool_check_metrics


def recorded() -> RunRecorder:
    r = RunRecorder("fraud-risk", registry=CollectorRegistry())
    r.plan(makespan_seconds=120, lower_bound_seconds=100, gap=0.2, solve_seconds=0.5, status="Optimal", solver="HiGHS")
    r.pool_demand("local", "cpu", demand=6, capacity=8)
    r.component("features", "local", "running", None, planned_seconds=30, start_delay_seconds=4)
    r.component("features", "local", "completed", 42.0, planned_seconds=30)
    r.component("risk_model", "local", "retrying", 3.0)
    r.component("risk_model", "local", "failed", 5.0)
    r.run_finished("Failed", makespan_seconds=150, planned_makespan_seconds=120)
    return r


def test_recorder_values_are_readable_from_its_registry():
    r = recorded()
    get = r.registry.get_sample_value
    p = {"pipeline": "fraud-risk"}
    assert get("planflow_plan_makespan_seconds", p) == 120
    assert get("planflow_plan_gap_ratio", p) == 0.2
    assert get("planflow_plan_info", {**p, "solver": "highs", "status": "optimal"}) == 1
    pool = {**p, "pool": "local", "resource": "cpu"}
    assert (get("planflow_pool_planned_peak_demand", pool), get("planflow_pool_capacity", pool)) == (6, 8)
    comp = {**p, "component": "features", "pool": "local"}
    assert get("planflow_component_duration_seconds_count", {**comp, "state": "completed"}) == 1
    assert get("planflow_component_duration_seconds_sum", {**comp, "state": "completed"}) == 42
    assert get("planflow_component_planned_duration_seconds", comp) == 30
    assert get("planflow_component_start_delay_seconds", comp) == 4
    assert get("planflow_component_running", comp) == 0
    model = {**p, "component": "risk_model", "pool": "local"}
    assert get("planflow_component_failures_total", model) == 2
    assert get("planflow_component_retries_total", model) == 1
    assert get("planflow_pipeline_slip_seconds", p) == 30
    assert get("planflow_pipeline_running", p) == 0
    assert get("planflow_pipeline_runs_finished_total", {**p, "state": "failed"}) == 1


def test_no_metric_has_a_run_id_label():
    registry = CollectorRegistry()
    for producer in (BridgeMetrics, RemediationMetrics):
        producer(registry)
    text = recorded().exposition().decode() + generate_latest(registry).decode()
    labels = set(re.findall(r"[{,](\w+)=", text))
    assert not labels & {"run_id", "flow_run_id", "flow_run", "task_run_id"}
    assert all(name.startswith("planflow_") for name in metric_catalog())


def test_recorder_exposition_passes_promtool():
    result = promtool_check_metrics(recorded().exposition())
    assert result.returncode == 0, result.stdout + result.stderr


def test_bridge_and_remediation_expositions_pass_promtool():
    registry = CollectorRegistry()
    bridge = BridgeMetrics(registry)
    bridge.received.labels("firing").inc()
    bridge.spool_depth.set(3)
    RemediationMetrics(registry).remediations.labels("retry", "succeeded").inc()
    result = promtool_check_metrics(generate_latest(registry))
    assert result.returncode == 0, result.stdout + result.stderr


def test_exporter_exposition_passes_promtool_against_the_real_server(prefect_server):
    from planflow.monitoring.exporter import Exporter

    exporter = Exporter(lookback_seconds=3600)
    assert asyncio.run(exporter.poll_once())
    assert exporter.registry.get_sample_value("planflow_exporter_prefect_up") == 1
    result = promtool_check_metrics(generate_latest(exporter.registry))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_exporter_reads_every_work_pool_not_the_first_page(prefect_server):
    """Pools, queues and workers were read as their first page (200): past it, a pool had
    no status, queue-depth or late-run figures, and its alerts never fired."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from planflow.monitoring.exporter import PAGE, Exporter

    names = [f"exporter-page-{i:03d}" for i in range(PAGE + 5)]

    async def create() -> None:
        async with get_client() as client:
            for name in names:
                await client.create_work_pool(WorkPoolCreate(name=name, type="process"), overwrite=True)

    async def delete() -> None:  # not left for the session's other tests (alerts on pools not ready)
        async with get_client() as client:
            for name in names:
                await client.delete_work_pool(name)

    asyncio.run(create())
    try:
        exporter = Exporter(lookback_seconds=60)
        assert asyncio.run(exporter.poll_once())
        for name in (names[0], names[-1]):
            labels = {"work_pool": name, "type": "process", "status": "not_ready"}
            assert exporter.registry.get_sample_value("planflow_prefect_work_pool_status", labels) == 1, name
    finally:
        asyncio.run(delete())


def test_push_without_a_pushgateway_is_a_cheap_no_op():
    r = RunRecorder("p", pushgateway_url=None, registry=CollectorRegistry())
    started = time.perf_counter()
    for _ in range(1000):
        r.component("c", "local", "completed", 1.0)
        r.push()
    assert time.perf_counter() - started < 1.0


def test_push_failure_is_logged_and_counted_never_raised(caplog):
    from tests.monitoring.helpers import free_port

    r = RunRecorder("p", pushgateway_url=f"http://127.0.0.1:{free_port()}", registry=CollectorRegistry())
    r.push()
    assert r.registry.get_sample_value("planflow_push_failures_total", {"pipeline": "p"}) == 1
    assert "could not push" in caplog.text


def test_push_to_a_real_pushgateway_and_read_it_back(monitoring_stack):
    paths, started = monitoring_stack
    url = started["pushgateway"].url
    r = recorded()
    r.pushgateway_url = url
    r.push()
    assert r.registry.get_sample_value("planflow_push_failures_total", {"pipeline": "fraud-risk"}) is None
    text = httpx.get(f"{url}/metrics", timeout=5).text
    line = next(x for x in text.splitlines() if x.startswith("planflow_plan_makespan_seconds{"))
    assert 'job="planflow"' in line and 'pipeline="fraud-risk"' in line and line.endswith(" 120")
    groups = httpx.get(f"{url}/api/v1/metrics", timeout=5).json()["data"]
    keys = [g["labels"] for g in groups]
    assert {"job": "planflow", "pipeline": "fraud-risk"} in keys
    # a second run replaces the group: no stale components of the first run remain
    second = RunRecorder("fraud-risk", pushgateway_url=url, registry=CollectorRegistry())
    second.plan(60, 50, 0.1, 0.2, "optimal", "highs")
    second.push()
    text = httpx.get(f"{url}/metrics", timeout=5).text
    assert 'component="features"' not in text
    assert re.search(r'planflow_plan_makespan_seconds\{[^}]*pipeline="fraud-risk"[^}]*\} 60', text)


def test_pushgateway_url_from_env_prefers_the_variable_then_the_recorded_stack(monkeypatch, tmp_path):
    monkeypatch.setenv("PLANFLOW_PUSHGATEWAY_URL", "http://gw:9091")
    assert pushgateway_url_from_env() == "http://gw:9091"
    monkeypatch.delenv("PLANFLOW_PUSHGATEWAY_URL")
    monkeypatch.setenv("PLANFLOW_HOME", str(tmp_path))
    assert pushgateway_url_from_env() is None
    (tmp_path / "monitoring").mkdir()
    (tmp_path / "monitoring" / "services.json").write_text(json.dumps({"pushgateway_url": "http://127.0.0.1:9191"}))
    assert pushgateway_url_from_env() == "http://127.0.0.1:9191"


async def end_run(flow_name: str, final: Any, run_id: Any = None, tags: list[str] | None = None) -> Any:
    """A flow run of `flow_name` (a new one, or `run_id` retried in place) run to `final`."""
    from prefect.client.orchestration import get_client
    from prefect.states import AwaitingRetry, Running

    async with get_client() as client:
        if run_id is None:
            flow_id = await client.create_flow_from_name(flow_name)
            body = {"flow_id": str(flow_id), "tags": tags or []}
            run_id = (await client.request("POST", "/flow_runs/", json=body)).json()["id"]
        else:
            await client.set_flow_run_state(run_id, AwaitingRetry(), force=True)
        await client.set_flow_run_state(run_id, Running(), force=True)
        await client.set_flow_run_state(run_id, final, force=True)
    return run_id


def finished(exporter: Any, flow: str, state: str, **labels: str) -> float:
    """The exporter's count of `flow`'s runs that ended in `state`, over every label set
    that has `labels`."""
    wanted = {"flow": flow, "state": state, **labels}
    return sum(
        sample.value
        for metric in exporter.registry.collect()
        if metric.name == "planflow_prefect_flow_runs_finished"
        for sample in metric.samples
        if sample.name.endswith("_total") and wanted.items() <= sample.labels.items()
    )


def test_a_run_that_fails_again_after_a_retry_is_counted_at_each_failure(prefect_server):
    """A retry (Prefect's, or the retry automation's) runs the same flow run again: each of
    its ends is a failure to count. The exporter counted a flow run once, so a run that
    failed again within a minute raised no alert, even when it had failed for good."""
    import uuid

    from prefect.states import Failed

    from planflow.monitoring.exporter import Exporter

    name = f"exporter-retried-{uuid.uuid4().hex[:8]}"
    exporter = Exporter(lookback_seconds=60)
    run_id = asyncio.run(end_run(name, Failed(message="boom")))
    assert asyncio.run(exporter.poll_once())
    assert finished(exporter, name, "failed") == 1
    assert asyncio.run(exporter.poll_once())  # seen again: not counted again
    assert finished(exporter, name, "failed") == 1
    asyncio.run(end_run(name, Failed(message="boom"), run_id))  # retried, and failed again
    assert asyncio.run(exporter.poll_once())
    assert finished(exporter, name, "failed") == 2


def test_a_component_run_killed_for_memory_is_counted_apart_from_its_pools_crashes(prefect_server, monkeypatch):
    """A distributed run's component child killed for memory is Crashed; its parent runs it
    again with more and tags it. Counted as a crash, it fed its pool's failure rate, and
    the failover paused the pool (SRE trial). A component's crash is counted once its
    parent had time to tag it: tagged, in the state `oom_killed`; else a crash."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    from planflow.monitoring import exporter as exporter_module
    from planflow.prefect.reserved import COMPONENT_FLOW, OOM_KILLED_TAG

    clock = {"ahead": 0.0}  # the exporter's clock, moved past the grace instead of waiting it out
    fake_time = SimpleNamespace(time=lambda: time.time() + clock["ahead"], monotonic=time.monotonic)
    monkeypatch.setattr(exporter_module, "time", fake_time)
    exporter = exporter_module.Exporter(lookback_seconds=0)
    ours = {"work_pool": ""}  # not the session's other component runs (on pools)
    killed = asyncio.run(end_run(COMPONENT_FLOW, Crashed(message="exit -9")))
    crashed = asyncio.run(end_run(COMPONENT_FLOW, Crashed(message="exit 1")))
    assert asyncio.run(exporter.poll_once())  # both too recent to tell
    assert finished(exporter, COMPONENT_FLOW, "crashed", **ours) == 0

    async def tag() -> None:  # what the parent does (runtime/oom_next.mark_oom_killed)
        async with get_client() as client:
            await client.update_flow_run(killed, tags=[OOM_KILLED_TAG])

    asyncio.run(tag())
    assert asyncio.run(exporter.poll_once())
    assert finished(exporter, COMPONENT_FLOW, "oom_killed", **ours) == 1  # tagged: told at once
    assert finished(exporter, COMPONENT_FLOW, "crashed", **ours) == 0
    clock["ahead"] = exporter_module.OOM_TAG_GRACE_SECONDS + 1  # past the grace: the untagged one is a crash
    assert asyncio.run(exporter.poll_once())
    assert finished(exporter, COMPONENT_FLOW, "crashed", **ours) == 1
    assert crashed and finished(exporter, COMPONENT_FLOW, "oom_killed", **ours) == 1
    # a held-back crash must be read again until its grace ends: the overlap is at least that
    assert exporter_module.Exporter(overlap_seconds=5).overlap >= exporter_module.OOM_TAG_GRACE_SECONDS
