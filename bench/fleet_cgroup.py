"""The fleet benchmark's machine to itself: a CPU cgroup with the largest weight.

Both policies of bench_fleet run on one pool of 2 cores. On a machine shared with other
work, Linux shares the cores per runnable thread, so a policy that runs more threads at
once (Prefect's default oversubscribes the pool) takes a larger share of the machine
from the other processes, and its makespan says more about the machine's other load than
about the policy. Run inside a cgroup whose CPU weight is the largest allowed, the
benchmark process and everything it starts (the Prefect server, PostgreSQL, the worker,
the flow runs) get the cores first whatever else runs, as on an idle machine, for both
policies alike: the cores the pool declares are then the cores there are.

    with confined("planflow-bench-fleet") as how:   # how: what was done, or why not
        ...

Needs a writable cgroup filesystem (root, or a delegated subtree): cgroup v1's `cpu`
controller (`cpu.shares`) or cgroup v2 (`cpu.weight`). Where it is not writable the
benchmark runs unconfined and says so in its results.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
V1_SHARES_MAX = 262144  # cpu.shares' largest value (the default is 1024)
V2_WEIGHT_MAX = 10000  # cpu.weight's largest value (the default is 100)


def _hierarchy() -> tuple[Path, str, str] | None:
    """(the folder new cgroups go in, the weight file, its largest value), or None."""
    if (ROOT / "cgroup.controllers").is_file():  # cgroup v2 (unified)
        own = Path(_own_v2_path())
        parent = ROOT / own.relative_to("/")
        if "cpu" in (parent / "cgroup.subtree_control").read_text().split():
            return parent, "cpu.weight", str(V2_WEIGHT_MAX)
        return None
    if (ROOT / "cpu" / "cgroup.procs").is_file():  # cgroup v1, the cpu controller
        return ROOT / "cpu", "cpu.shares", str(V1_SHARES_MAX)
    return None


def _own_v2_path() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return "/"


@contextmanager
def confined(name: str) -> Iterator[str]:
    """Move this process (and so what it starts from now on) into cgroup `name` with the
    largest CPU weight; on exit move it back and remove the cgroup when it is empty.
    Yields a sentence saying what was done, or why the process runs unconfined."""
    try:
        found = _hierarchy()
    except OSError as exc:
        found, why = None, f"cgroups not readable: {exc}"
    else:
        why = "no writable cgroup CPU controller (cgroup v1 cpu, or v2 with cpu delegated)"
    if found is None:
        yield f"not confined: {why}"
        return
    parent, weight_file, weight = found
    group = parent / f"{name}-{os.getpid()}"
    try:
        group.mkdir(exist_ok=True)
        (group / weight_file).write_text(weight)
        (group / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as exc:
        _remove(group)
        yield f"not confined: cannot use {group}: {exc} (root, or a delegated cgroup, is needed)"
        return
    try:
        yield f"confined: cgroup {group} ({weight_file}={weight}, the largest; no quota)"
    finally:
        try:
            (parent / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            pass
        _remove(group)


def _remove(group: Path) -> None:
    """Remove the cgroup; one that still holds a process (a child left running) stays."""
    try:
        group.rmdir()
    except OSError:
        pass
