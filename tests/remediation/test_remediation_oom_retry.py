"""The OOM retry is a guarded, audited remediation, for real: the gate the distributed
executor asks before a run again with more memory (planflow.runtime.oom_next.admit,
through the `planflow.hooks` entry point) counts it in the guard's ledger on the Prefect
server, so a storm of OOM kills is cut off by the AlertRoute `component-oom-killed`, and
writes every decision down: the artifact `remediation-oom-retry` on the pipeline's flow
run and `planflow_remediations_total{action="oom-retry"}` on the Pushgateway."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.context import FlowRunContext
from prefect.variables import Variable
from prometheus_client.parser import text_string_to_metric_families

from planflow.prefect.blocks.alert_route import COMPONENT_OOM_KILLED
from planflow.remediation.guard import _variable_name
from planflow.runtime.oom_gate import OomRetry
from planflow.runtime.oom_next import OomRetryRefusedError, admit

from tests.remediation.conftest import route_override

OUTCOMES = ("succeeded", "rate_limited", "skipped")


def _count(gateway: str, outcome: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{gateway}/metrics", timeout=5).text):
        for s in family.samples:
            labels = s.labels
            if s.name == "planflow_remediations_total" and labels.get("action") == "oom-retry":
                if labels.get("outcome") == outcome:
                    return s.value
    return 0.0


def _request(step: str, parent: str) -> OomRetry:
    where = "docker container 0123456789ab (State.OOMKilled, exit 137)"
    return OomRetry("oom-storm", step, "docker", "docker", 0.25, 0.5, 1, where, str(uuid.uuid4()), parent)


@flow(name="oom-storm")
def storm(steps: list[str]) -> tuple[str, list[str]]:
    """Eight components of one pipeline run killed for memory at once, then the first again."""
    parent = str(FlowRunContext.get().flow_run.id)
    answers = []
    for step in steps:
        try:
            admit(_request(step, parent))
            answers.append("act")
        except OomRetryRefusedError as exc:
            answers.append(str(exc))
    return parent, answers


def test_a_storm_of_oom_kills_is_cut_off_by_the_guard_and_audited(monitoring_stack, monkeypatch):
    gateway = monitoring_stack[1]["pushgateway"].url
    monkeypatch.setenv("PLANFLOW_PUSHGATEWAY_URL", gateway)
    Variable.unset(_variable_name("rate", COMPONENT_OOM_KILLED, False))  # this route's last minute, from other tests
    before = {o: _count(gateway, o) for o in OUTCOMES}
    with route_override(COMPONENT_OOM_KILLED, action="retry", max_attempts=1, cooldown_seconds=0, rate_limit=3):
        parent, answers = storm([f"step{i}" for i in range(8)] + ["step0"])

    assert answers[:3] == ["act"] * 3, answers
    for refused in answers[3:8]:
        assert "component 'step" in refused and "its run again with 0.5 GiB on pool 'docker' was refused" in refused
        assert "(rate_limited: route ComponentOomKilled: 3 actions in the last 60 s, limit 3)" in refused
        assert "Fix:" in refused and "component-oom-killed" in refused
    assert "(max_attempts: oom-retry:" in answers[8] and "1 of 1 attempts used" in answers[8]

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["remediation-oom-retry"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[parent]),
            )
        )
    said = sorted(a.description.split(":")[1].strip() for a in artifacts)
    assert said == ["rate_limited"] * 5 + ["skipped"] + ["succeeded"] * 3, said
    assert any("oom-storm.step0" in (a.data or "") and "runs again with 0.5 GiB" in (a.data or "") for a in artifacts)
    after = {o: _count(gateway, o) for o in OUTCOMES}
    assert {o: after[o] - before[o] for o in OUTCOMES} == {"succeeded": 3, "rate_limited": 5, "skipped": 1}


def test_action_none_turns_the_oom_retry_off(registered_blocks):
    with route_override(COMPONENT_OOM_KILLED, action="none"):
        with pytest.raises(OomRetryRefusedError, match=r"was refused \(no_action: route ComponentOomKilled: action"):
            admit(_request("alone", ""))
