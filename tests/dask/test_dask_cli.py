"""`planflow dask status` against the session's real cluster, and against an address
where no scheduler answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from planflow.ops.server import free_port

PLANFLOW = str(Path(sys.executable).with_name("planflow"))
pytestmark = pytest.mark.slow


def test_dask_status_lists_each_worker_and_a_dead_address_names_the_fix(dask_cluster, cli_env):
    _, state = dask_cluster
    env = {**cli_env, "PLANFLOW_DASK_ADDRESS": state.address, "PLANFLOW_DASK_CONNECT_SECONDS": "3"}
    shown = subprocess.run([PLANFLOW, "dask", "status"], env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    workers = [line for line in shown.stdout.splitlines() if line.startswith("worker")]
    assert len(workers) == 2 and all("local.cpu=2 local.gpu=0 local.mem_gib=2" in w for w in workers), shown.stdout
    dead = f"tcp://127.0.0.1:{free_port()}"
    refused = subprocess.run(
        [PLANFLOW, "dask", "status", "--address", dead], env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "unreachable" in refused.stdout and dead in refused.stdout and "planflow dask up" in refused.stdout


def test_dask_up_on_a_port_in_use_is_refused_at_once(tmp_path, monkeypatch):
    """Something else listens on the port asked for: refused before anything starts (a
    client asking it for a Dask scheduler used to wait without bound), nothing recorded."""
    import socket

    monkeypatch.delenv("PLANFLOW_DASK_ADDRESS", raising=False)  # the session cluster's: up would use it

    from planflow.ops import dask as dask_ops
    from planflow.runtime.dask_cluster import DaskClusterError
    from planflow.settings import StatePaths

    paths = StatePaths(tmp_path / ".planflow")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DaskClusterError) as refused:
            dask_ops.up(paths, {"local": {"cpu": 1, "gpu": 0, "mem_gib": 1}}, port=port)
    assert str(refused.value) == (
        f"port {port} on 127.0.0.1 is already in use. Fix: choose another --port, or leave it out (a free one)"
    )
    assert not dask_ops.cluster_file(paths).exists()


def test_what_answers_at_an_address_is_named(dask_cluster):
    """A malformed address, a scheme Dask lacks, a port nothing listens on (refused at
    once, not after the whole wait), a listener that never answers (within the timeout),
    a worker given for the scheduler: each a DaskClusterError naming the address and why."""
    import socket

    from planflow.ops import dask as dask_ops
    from planflow.runtime.dask_cluster import DaskClusterError, cluster_resources

    paths, _ = dask_cluster
    state = dask_ops.status(paths)  # now: a worker killed by another test came back elsewhere
    worker = sorted(state.workers)[0]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        silent = f"tcp://127.0.0.1:{mute.getsockname()[1]}"
        nobody = f"tcp://127.0.0.1:{free_port()}"
        expected = {
            "notanaddress": "'notanaddress' is not a Dask scheduler address (missing port number",
            "http://127.0.0.1:8786": "unknown scheme 'http', Dask knows inproc, tcp, tls, ucx, ws, wss",
            nobody: f"the Dask scheduler at {nobody} does not answer (nothing listens on port",
            silent: f"the Dask scheduler at {silent} does not answer (no answer within 1 s)",
            worker: f"{worker} answers, but not as a Dask scheduler",
            # TLS needs Dask's TLS configuration: named, not "not a scheduler"
            state.address.replace("tcp://", "tls://"): "cannot connect to the Dask scheduler at tls://",
        }
        for address, said in expected.items():
            with pytest.raises(DaskClusterError) as refused:
                cluster_resources(address, timeout=1)
            assert said in str(refused.value) and "Fix: " in str(refused.value), (address, str(refused.value))
    assert cluster_resources(state.address, timeout=5) == state.workers


def test_dask_up_keeps_the_running_cluster_only_as_asked(dask_cluster, monkeypatch, tmp_path):
    """Over the session's running cluster (two workers): `up` with no worker count keeps
    it; another count, port or pool size is refused naming the difference (it was kept
    silently); `--address` is refused while it runs (its processes would be orphaned).
    With PLANFLOW_DASK_ADDRESS set, `up` starts nothing and checks that scheduler."""
    from planflow.ops import dask as dask_ops
    from planflow.runtime.dask_cluster import DaskClusterError
    from planflow.settings import StatePaths

    from tests.dask.conftest import SIZING

    paths, _ = dask_cluster
    monkeypatch.delenv("PLANFLOW_DASK_ADDRESS")
    state = dask_ops.status(paths)
    assert dask_ops.up(paths, SIZING).address == state.address
    for asked, said in (
        ({"workers": 1}, "its workers are local: 2 x (local.cpu=2 local.gpu=0 local.mem_gib=2); asked for: local: 1 x"),
        ({"port": free_port()}, f"it listens at {state.address}, not on port"),
        ({"capacities": {"local": {**SIZING["local"], "cpu": 8.0}}}, "asked for: local: 2 x (local.cpu=4"),
    ):
        with pytest.raises(DaskClusterError) as refused:
            dask_ops.up(paths, **{"capacities": SIZING, **asked})
        assert f"a local Dask cluster already runs at {state.address}" in str(refused.value), str(refused.value)
        assert said in str(refused.value) and "Fix: planflow dask down" in str(refused.value), str(refused.value)
    with pytest.raises(DaskClusterError) as orphaning:
        dask_ops.up(paths, address=f"tcp://127.0.0.1:{free_port()}")
    assert "would leave its processes running" in str(orphaning.value)
    assert dask_ops.status(paths).address == state.address  # still recorded, still running

    elsewhere = StatePaths(tmp_path / ".planflow")
    monkeypatch.setenv("PLANFLOW_DASK_ADDRESS", state.address)
    kept = dask_ops.up(elsewhere, SIZING)
    assert (kept.state, kept.address, kept.workers) == ("external", state.address, state.workers)
    dead = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("PLANFLOW_DASK_ADDRESS", dead)
    with pytest.raises(DaskClusterError) as unanswered:
        dask_ops.up(elsewhere, SIZING)
    assert dead in str(unanswered.value) and "unset PLANFLOW_DASK_ADDRESS" in str(unanswered.value)
    assert not dask_ops.cluster_file(elsewhere).exists()  # nothing started, nothing recorded


def test_dask_up_with_address_and_sizing_options_is_refused(cli_env):
    """--address starts no cluster, so options that size one are refused, not ignored."""
    given = subprocess.run(
        [PLANFLOW, "dask", "up", "--address", "tcp://127.0.0.1:8786", "--workers", "2", "--port", "9000"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert given.returncode == 2, given.stdout + given.stderr
    assert "--workers, --port size a local cluster; --address starts none. Fix: leave out --workers" in given.stderr


def test_a_worker_whose_process_ended_is_named_by_status_and_started_again_by_up(tmp_path, monkeypatch, capsys):
    """A worker killed with its nanny (kill of its process group, as an out-of-memory kill
    of the group or a careless `kill` does) never comes back by itself: `status` names it
    missing with its log, and `up`, which kept the running cluster without a word, starts
    it again. A cluster of the test's own, one worker."""
    monkeypatch.delenv("PLANFLOW_DASK_ADDRESS", raising=False)  # the session cluster's: up would use it

    from planflow.cli.dask import _show
    from planflow.ops import dask as dask_ops
    from planflow.ops.processes import stop_group, wait_until
    from planflow.settings import StatePaths

    paths = StatePaths(tmp_path / ".planflow")
    sizing = {"local": {"cpu": 1, "gpu": 0, "mem_gib": 1}}
    try:
        first = dask_ops.up(paths, sizing)
        assert len(first.workers) == 1 and first.missing == {}, first
        pid = dask_ops._live(paths, "local-0")
        assert pid is not None and stop_group(pid)
        assert wait_until(lambda: not dask_ops.status(paths).workers, 30), dask_ops.status(paths)
        gone = dask_ops.status(paths)
        assert gone.state == "running" and list(gone.missing) == ["local-0"], gone
        assert gone.missing["local-0"].startswith(dask_ops.GONE) and "local-0.log" in gone.missing["local-0"]
        _show(gone)
        shown = capsys.readouterr().out
        assert "local-0  MISSING: its process has ended" in shown and "Fix: planflow dask up" in shown, shown
        again = dask_ops.up(paths, sizing)
        assert len(again.workers) == 1 and again.missing == {}, again
        assert again.detail == "started again: local-0" and again.address == first.address
    finally:
        dask_ops.down(paths)


def test_local_workers_offer_no_more_than_the_machine_has():
    """`workpools apply` makes a `kubernetes` pool of cpu=32, gpu=4 for a cluster; `dask up`
    made a local worker offer those 4 GPUs on a machine with none (a gpu=1 step that
    `planflow plan` refused ran there in Dask mode) and 32 cores on a machine of 2 (the plan
    ran 32 steps at once). Its workers now offer the machine's."""
    from planflow.ops.dask import local_capacities, worker_specs

    declared = {"kubernetes": {"cpu": 32, "gpu": 4, "mem_gib": 128}, "local": {"cpu": 2, "gpu": 0, "mem_gib": 4}}
    offered, cut = local_capacities(declared, {"cpu": 2, "gpu": 0, "mem_gib": 23.4})
    assert cut == ["kubernetes (cpu=32, gpu=4, mem_gib=128)"]
    assert {w.name: (w.nthreads, w.resources) for w in worker_specs(offered)} == {
        "kubernetes-0": (2, {"kubernetes.cpu": 2.0, "kubernetes.gpu": 0.0, "kubernetes.mem_gib": 23.4}),
        "local-0": (2, {"local.cpu": 2.0, "local.gpu": 0.0, "local.mem_gib": 4.0}),
    }
    assert local_capacities(declared, {"cpu": 64, "gpu": 8, "mem_gib": 256}) == (
        {p: {k: float(v) for k, v in c.items()} for p, c in declared.items()},
        [],
    )
    assert declared["kubernetes"]["gpu"] == 4  # the pools' own declarations are left as they are
