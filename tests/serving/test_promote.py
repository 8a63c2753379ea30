"""`planflow promote` and `planflow demote`: a tag on an ended run, which a service
started with `--tag` follows (against the session's real Prefect server)."""

from __future__ import annotations

import asyncio

import pytest
from prefect import flow
from typer.testing import CliRunner

from planflow import to_flow
from planflow.cli.app import app
from planflow.monitoring.serving_metrics import ServingMetrics
from planflow.serving.loader import ServedRuns
from planflow.serving.swap import ModelSwapper

from tests.serving.toy import make

pytestmark = pytest.mark.usefixtures("registered_blocks")


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())  # rich may wrap long lines


@flow(name="serving-toy-promote-fails")
def _fails() -> None:
    raise RuntimeError("on purpose")


def test_a_promoted_run_is_served_and_demoting_it_rolls_the_service_back():
    path = make("serving-toy-promote")
    flow_ = to_flow(path.pipeline)
    older = flow_(factor=3.0, return_state=True).state_details.flow_run_id
    newer = flow_(factor=5.0, return_state=True).state_details.flow_run_id
    service = ModelSwapper(path, ServingMetrics(pipeline=path.pipeline.name), ServedRuns(tags=("release",)))
    assert asyncio.run(service.check()) is False and service.current is None  # nothing promoted yet

    code, out = _cli("promote", str(older))
    assert code == 0, out
    assert (
        "promoted run '" in out
        and f"({older}) of serving-toy-promote" in out
        and "tags now pipeline:serving-toy-promote, planflow, release" in out
    )
    assert "`planflow serve serving-toy-promote --tag release` serves this run" in out
    assert asyncio.run(service.check()) is True and service.current.outputs["scale"] == 3.0

    code, out = _cli("promote", str(newer))
    assert code == 0 and "serves this run" in out, out
    assert asyncio.run(service.check()) is True and service.current.outputs["scale"] == 5.0

    code, out = _cli("promote", str(older))  # a tag it has: nothing changes, and the newer one is served
    assert code == 0, out
    assert "is already tagged release: nothing changed" in out
    assert f"not this one. Fix, to serve this one: planflow demote {newer}" in out

    code, out = _cli("demote", str(newer))  # the rollback
    assert code == 0, out
    assert (
        "demoted run '" in out
        and "tags now pipeline:serving-toy-promote, planflow `" in out
        and f"({older}), the newest Completed run" in out
    )
    assert asyncio.run(service.check()) is True and service.current.outputs["scale"] == 3.0

    code, out = _cli("demote", str(older))  # none left: the service keeps what it serves
    assert code == 0 and "no Completed run of serving-toy-promote is tagged release now" in out, out
    assert asyncio.run(service.check()) is False and service.current.outputs["scale"] == 3.0


def test_promote_refuses_a_run_that_cannot_be_served_naming_it_and_the_fix():
    failed = _fails(return_state=True).state_details.flow_run_id
    code, out = _cli("promote", str(failed))
    assert code == 1 and f"({failed}) is Failed: only a Completed run is served" in out, out
    assert "Fix: promote a Completed run of serving-toy-promote-fails" in out

    code, out = _cli("promote", "no-such-run-name")
    assert code == 1 and "no flow run is named 'no-such-run-name'" in out, out
    code, out = _cli("demote", "00000000-0000-4000-8000-000000000000")
    assert code == 1 and "no flow run has the id 00000000-0000-4000-8000-000000000000" in out, out
    code, out = _cli("promote", str(failed), "--tag", " ")
    assert code == 2 and "a tag must not be empty" in out, out
