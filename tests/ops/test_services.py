"""planflow.ops.services' process identity, with real processes: a pid file whose pid
now belongs to another process is stale, and that process is never signalled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from planflow.monitoring.thresholds import HERE, ThresholdsError
from planflow.ops import services
from planflow.ops.processes import spawn, start_ticks, stop_process, write_pid_file
from planflow.ops.server import free_port
from planflow.settings import StatePaths, make_private_dir


def test_a_recycled_pid_is_stale_and_never_signalled(tmp_path):
    paths = StatePaths(tmp_path)
    folder = services.monitoring_dir(paths)
    folder.mkdir(parents=True)
    ports = {name: free_port() for name in services.ORDER}  # nothing answers there
    services.services_file(paths).write_text(json.dumps({"ports": ports}))
    # A process whose command line looks like the bridge's, started after the one recorded.
    command = [sys.executable, "-c", "import time; time.sleep(60)", "planflow.monitoring.bridge"]
    lookalike = spawn(command, tmp_path / "lookalike.log", os.environ, cwd=tmp_path)
    try:
        (folder / "bridge.pid").write_text(f"{lookalike.pid} {start_ticks(lookalike.pid) - 1}")
        assert services.status(paths)["bridge"].state == "stale"
        services.stop("bridge", paths, timeout=5)
        assert lookalike.poll() is None, "a process that is not the recorded one was signalled"
        assert not (folder / "bridge.pid").exists()

        write_pid_file(folder / "bridge.pid", lookalike.pid)  # now it is the recorded process
        bridge = services.status(paths)["bridge"]
        assert (bridge.state, bridge.pid) == ("unhealthy", lookalike.pid)
        services.stop("bridge", paths, timeout=5)
        assert lookalike.wait(5) == -15
    finally:
        stop_process(lookalike, timeout=5)


def test_a_pid_file_of_an_older_planflow_holds_only_the_pid(tmp_path):
    paths = StatePaths(tmp_path)
    folder = services.monitoring_dir(paths)
    folder.mkdir(parents=True)
    services.services_file(paths).write_text(json.dumps({"ports": {n: free_port() for n in services.ORDER}}))
    other = spawn([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "o.log", os.environ, cwd=tmp_path)
    try:
        (folder / "exporter.pid").write_text(str(other.pid))  # its command line is not the exporter's
        assert services.status(paths)["exporter"].state == "stale"
        services.down(paths)
        assert other.poll() is None
    finally:
        stop_process(other, timeout=5)


def test_a_projects_own_thresholds_drive_the_stacks_rules(tmp_path):
    """A project's monitoring/thresholds.yml (a copy of planflow's, edited) is what `stack
    up` renders its rules from, checked by promtool; a bad value names the file and key."""
    project = tmp_path / "project"
    own = project / "monitoring" / "thresholds.yml"
    own.parent.mkdir(parents=True)
    paths = StatePaths(project / ".planflow")
    assert services.project_thresholds(paths) is None  # planflow's own until the project has one

    source = yaml.safe_load((HERE / "thresholds.yml").read_text())
    source["thresholds"]["overrun_factor"] = 7.25
    own.write_text(yaml.safe_dump(source))
    assert services.project_thresholds(paths) == own
    make_private_dir(services.monitoring_dir(paths))  # as `stack up` does first
    configs = services.render_configs(paths, "fast", services.load_thresholds(paths)["ports"])
    rules = configs["rules"]
    assert rules.parent == services.monitoring_dir(paths)
    text = rules.read_text()
    assert str(own) in text.splitlines()[0] and "7.25" in text
    assert yaml.safe_load(configs["prometheus"].read_text())["rule_files"] == [str(rules)]
    promtool = shutil.which("promtool")
    if promtool:
        checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr

    source["thresholds"]["overrun_factor"] = "lots"
    own.write_text(yaml.safe_dump(source))
    with pytest.raises(ThresholdsError, match="overrun_factor") as bad:
        services.load_thresholds(paths)
    assert str(own) in str(bad.value)
