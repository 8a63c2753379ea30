"""`planflow automations apply | ls | rm`: idempotent, matched by name, against the real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _quiet_after(registered_blocks):
    yield
    from tests.remediation.conftest import quiesce

    quiesce()


def test_apply_is_idempotent_and_matches_by_name(registered_blocks):
    from planflow.remediation import automations

    first = automations.apply()
    names = {a.name for a in automations.planflow_automations()}
    assert set(automations.NAMES.values()) == names, first
    second = automations.apply()
    assert [l for l in second if l.startswith("planflow: ")] == [f"{a}: unchanged" for a in sorted(names)] or all(
        l.endswith("unchanged") for l in second if l.startswith("planflow: ")
    ), second
    assert len(automations.planflow_automations()) == len(names)  # no duplicates


def test_apply_updates_a_changed_automation_and_removes_duplicates(registered_blocks):
    from prefect.automations import Automation
    from prefect.events.actions import DoNothing
    from prefect.events.schemas.automations import EventTrigger

    from planflow.remediation import automations

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
    from planflow.remediation import automations

    automations.apply()
    routes = load_routes()
    failover = next(a for a in automations.planflow_automations() if a.name == automations.NAMES["failover"])
    matched = failover.trigger.match.root["planflow.alert.name"]
    assert sorted(matched) == sorted(n for n, r in routes.items() if r.action == "failover")


def test_cli_ls_and_rm(registered_blocks):
    from planflow.remediation import automations

    automations.apply()
    run = lambda *a: subprocess.run(
        [sys.executable, "-m", "planflow.remediation.automations", *a],  # noqa: E731
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
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
    from pathlib import Path

    from planflow.remediation import automations
    from planflow.settings import StatePaths

    automations.apply()
    paths = StatePaths.discover()
    pid = automations.worker_up(paths)
    try:
        log = paths.home / "monitoring" / "remediation-worker.log"
        again = automations.worker_up(paths)
        assert again == pid, (
            f"a second worker ({again}) was started beside {pid}; "
            f"worker log:\n{log.read_text()[-3000:] if log.exists() else '-'}"
        )
        assert Path(f"/proc/{pid}").exists()
    finally:
        assert automations.worker_down(paths)
    assert (
        not Path(f"/proc/{pid}/cmdline").exists()
        or b"planflow-remediation" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    assert automations.worker_down(paths) is False
