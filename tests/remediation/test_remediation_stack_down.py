"""`planflow stack down` stops every worker a rescale started (issue 13: a plain
`prefect worker` a rescale had started was left running), found in the state folder's
records and in the guard's ledgers on the server. Real workers, real server, the real
command (without --server, so the session's server stays up)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from planflow.ops.workers import forget_worker, is_our_process, recorded_workers, stop_group
from planflow.prefect.blocks.alert_route import load_route
from planflow.remediation.guard import Guard
from planflow.remediation.scaling import scale_out, workers_dir

PLANFLOW = str(Path(sys.executable).with_name("planflow"))


def test_stack_down_stops_every_worker_a_rescale_started(remediation_applied, module_leftovers, cli_env):
    pool = module_leftovers.pool(f"down-{uuid.uuid4().hex[:6]}")
    route = load_route("PlanflowLateRunBacklog")
    recorded, ledger_only = scale_out(pool, "process", 2, route)  # as the rescale flow starts them
    assert recorded["name"] in recorded_workers(workers_dir())
    # Started from another state folder: only the guard's ledger on the server names it.
    forget_worker(workers_dir(), ledger_only["name"])
    Guard(route).update(f"rescale:{pool}", workers=[recorded, ledger_only])
    workers = [recorded, ledger_only]
    try:
        assert all(is_our_process(w["pid"], w["name"]) for w in workers)
        done = subprocess.run(
            [PLANFLOW, "stack", "down", "--no-server"], env=cli_env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "stopped 2 worker(s) a rescale had started" in done.stdout, done.stdout
        for worker in workers:
            assert worker["name"] in done.stdout, done.stdout
            assert not is_our_process(worker["pid"], worker["name"]), f"{worker['name']} still runs"
        assert recorded_workers(workers_dir()) == {}
    finally:
        for worker in workers:
            if is_our_process(worker["pid"], worker["name"]):
                stop_group(worker["pid"], 10)


def test_stack_down_says_so_when_no_such_worker_runs(prefect_server, cli_env):
    done = subprocess.run(
        [PLANFLOW, "stack", "down", "--no-server"], env=cli_env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no worker a rescale started was running" in done.stdout, done.stdout
