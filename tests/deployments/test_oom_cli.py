"""`planflow demo heal --scenario oom` from the command line, as the README says.

A module of its own: test_oom.py keeps a Docker worker of the session's for its module,
and a second worker on the same pool could take the demo's child runs and write their
outputs where the demo's project does not read them ("Path ... does not exist").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from planflow.monitoring.thresholds import HERE
from planflow.remediation.oom_demo import pipeline

from tests.monitoring.helpers import free_port
from tests.remediation.conftest import alerts_off


def test_the_cli_demo_tells_the_whole_story(docker_image, registered_blocks, tmp_path):
    """`planflow demo heal --scenario oom` as the README says, against the session's
    server: a project of its own whose thresholds put the monitoring stack on free ports
    (stopped after with `planflow stack down --no-server`). The story is the function's
    (test_oom.py); this checks that the command runs it and says so."""
    project = tmp_path / "project"
    thresholds = yaml.safe_load((HERE / "thresholds.yml").read_text())
    thresholds["ports"] = {name: free_port() for name in thresholds["ports"]}
    (project / "monitoring").mkdir(parents=True)
    (project / "monitoring" / "thresholds.yml").write_text(yaml.safe_dump(thresholds))
    planflow = str(Path(sys.executable).with_name("planflow"))
    env = dict(os.environ, PLANFLOW_HOME=str(project / ".planflow"), PLANFLOW_PUSHGATEWAY_URL="")
    try:
        done = subprocess.run(
            [planflow, "demo", "heal", "--scenario", "oom", "--timeout", "240"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        subprocess.run([planflow, "stack", "down", "--no-server"], env=env, capture_output=True, timeout=120)
        alerts_off()  # the demo applied every automation: the session's baseline has the alert-driven ones off
        label = f"label=io.prefect.flow-run-name={pipeline.name}.hungry"
        left = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True).stdout.split()
        if left:
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "plan before: hungry planned with 0.25 GiB (declared)" in out
    assert "mem_limit 256 MiB, exit" in out and "killed for memory (State.OOMKilled)" in out
    assert "mem_limit 512 MiB, exit 0, completed" in out
    assert "audit (remediation oom-retry, guarded by AlertRoute component-oom-killed): oom-retry: succeeded:" in out
    assert "hungry Completed after 1 OOM kill(s), at 0.5 GiB" in out
    assert "plan after: hungry planned with " in out and "(learned n=1" in out
