"""planflow.ops.services' process identity, with real processes: a pid file whose pid
now belongs to another process is stale, and that process is never signalled."""

from __future__ import annotations

import json
import os
import sys

from planflow.ops import services
from planflow.ops.processes import spawn, start_ticks, stop_process, write_pid_file
from planflow.ops.server import free_port
from planflow.settings import StatePaths


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
