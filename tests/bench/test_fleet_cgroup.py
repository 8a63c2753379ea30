"""The fleet benchmark's cgroup: the benchmark process, and what it starts, moved into a
cgroup of the largest CPU weight and back out, the cgroup removed after."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.fleet_cgroup import confined


def _cpu_cgroup(pid: int | str = "self") -> str:
    """This process's CPU cgroup path (cgroup v1's cpu controller, else the v2 path)."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    return next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))


def test_the_benchmark_and_its_children_run_in_a_heavy_cgroup_and_come_back_out():
    before = _cpu_cgroup()
    with confined("planflow-test-fleet") as how:
        inside = _cpu_cgroup()
        child = subprocess.run(
            [sys.executable, "-c", "print(open('/proc/self/cgroup').read())"],
            text=True,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    after = _cpu_cgroup()
    assert after == before
    if how.startswith("not confined"):  # a machine whose cgroups are not writable: said, nothing moved
        assert "cgroup" in how and inside == before, how
        return
    assert how.startswith("confined: cgroup ") and ("cpu.shares=262144" in how or "cpu.weight=10000" in how), how
    assert inside.endswith(f"planflow-test-fleet-{os.getpid()}") and inside != before
    assert inside in child  # a process started inside is in the cgroup too
    group = Path(how.split()[2])
    assert not group.exists(), f"{group} left behind"
