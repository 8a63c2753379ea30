"""`planflow automations apply | ls | rm`: idempotent, matched by name, against the real
server; the remediation deployments take one typed `alert` parameter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from planflow.ops.processes import command_line
from planflow.remediation import automations

from tests.remediation.conftest import alerts_off

ROOT = Path(__file__).resolve().parents[2]
PLANFLOW = str(Path(sys.executable).with_name("planflow"))


@pytest.fixture(scope="module", autouse=True)
def baseline_after(module_leftovers):
    """`apply` turns every automation on: back to the session's baseline afterwards."""
    yield
    alerts_off()


def test_apply_is_idempotent_and_matches_by_name(registered_blocks):
    first = automations.apply()
    names = {a.name for a in automations.planflow_automations()}
    assert set(automations.NAMES.values()) == names, first
    second = automations.apply()
    assert sorted(line for line in second if line.startswith("planflow: ")) == [
        f"{a}: unchanged" for a in sorted(names)
    ]
    assert len(automations.planflow_automations()) == len(names)  # no duplicates


def test_apply_updates_a_changed_automation_and_removes_duplicates(registered_blocks):
    from prefect.automations import Automation
    from prefect.events.actions import DoNothing
    from prefect.events.schemas.automations import EventTrigger

    automations.apply()
    name = automations.NAMES["failover"]
    stored = Automation.read(name=name)
    stored.description = "edited by hand"
    stored.update()
    Automation(name=name, trigger=EventTrigger(expect={"x.y"}), actions=[DoNothing()]).create()
    lines = automations.apply()
    assert f"{name}: updated" in lines
    found = [a for a in automations.planflow_automations() if a.name == name]
    assert len(found) == 1 and found[0].description != "edited by hand"


def test_routes_drive_the_trigger_alert_lists(registered_blocks):
    from planflow.prefect.blocks.alert_route import load_routes

    automations.apply()
    routes = load_routes()
    failover = next(a for a in automations.planflow_automations() if a.name == automations.NAMES["failover"])
    matched = failover.trigger.match.root["planflow.alert.name"]
    assert sorted(matched) == sorted(n for n, r in routes.items() if r.action == "failover")


def test_the_actions_pass_one_templated_alert_parameter(registered_blocks):
    automations.apply()
    by_name = {a.name: a for a in automations.planflow_automations()}
    for action in ("retry", "failover", "rescale"):
        [run] = by_name[automations.NAMES[action]].actions
        assert set(run.parameters) == {"alert"}, run.parameters
        fields = set(run.parameters["alert"])
        assert {"event_id", "event", "resource_id", "event_occurred"} <= fields, fields
        assert ("labels" in fields) == (action != "retry"), fields


def test_the_deployments_run_form_shows_one_typed_alert(registered_blocks):
    """The UI builds a deployment's Run form from its parameter schema: one object
    `alert`, an AlertEvent with typed fields."""
    from prefect.client.orchestration import get_client

    from planflow.remediation.names import deployment_of

    automations.apply()
    with get_client(sync_client=True) as client:
        for flow_name, entrypoint in automations.REMEDIATION_DEPLOYMENTS.items():
            deployment = client.read_deployment_by_name(deployment_of(flow_name))
            assert deployment.entrypoint == entrypoint
            schema = deployment.parameter_openapi_schema
            assert list(schema["properties"]) == ["alert"], schema
            assert schema["properties"]["alert"]["$ref"].endswith("/AlertEvent"), schema
            fields = schema["definitions"]["AlertEvent"]["properties"]
            assert set(fields) == {
                "alertname",
                "work_pool",
                "event_id",
                "event",
                "resource_id",
                "labels",
                "status",
                "recheck",
                "event_occurred",
            }, fields
            assert fields["recheck"]["type"] == "integer" and fields["labels"]["type"] == "object"
            assert {"enum": ["firing", "resolved"], "type": "string"} in fields["status"]["anyOf"]
            assert {"format": "date-time", "type": "string"} in fields["event_occurred"]["anyOf"]


def test_cli_ls_and_rm(registered_blocks):
    automations.apply()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PLANFLOW, "automations", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)

    ls = run("ls")
    assert ls.returncode == 0, ls.stderr
    for name in automations.NAMES.values():
        assert name in ls.stdout
    rm = run("rm", "crash silent runs")
    assert rm.returncode == 0 and automations.NAMES["crash"] in rm.stdout, rm.stderr
    assert automations.NAMES["crash"] not in {a.name for a in automations.planflow_automations()}
    missing = run("delete", "no such automation")
    assert missing.returncode == 1
    applied = run("apply")
    assert applied.returncode == 0 and f"{automations.NAMES['crash']}: created" in applied.stdout, applied.stderr


def test_worker_up_is_idempotent_and_down_stops_it(registered_blocks):
    from planflow.settings import StatePaths

    automations.apply()
    paths = StatePaths.discover()
    pid = automations.worker_up(paths)
    process = psutil.Process(pid)
    try:
        log = paths.home / "monitoring" / "remediation-worker.log"
        again = automations.worker_up(paths)
        assert again == pid, (
            f"a second worker ({again}) was started beside {pid}; "
            f"worker log:\n{log.read_text()[-3000:] if log.exists() else '-'}"
        )
        assert process.is_running() and "planflow.remediation.worker" in " ".join(command_line(process))
    finally:
        assert automations.worker_down(paths)
    assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    assert automations.worker_down(paths) is False
