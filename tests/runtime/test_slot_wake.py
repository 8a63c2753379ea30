"""Runs on one machine wake each other when they give slots back (runtime/slot_wake.py).

Real Unix sockets in a temporary folder; no Prefect server is needed (the folder is keyed
by the API URL, set here for each test)."""

from __future__ import annotations

import os
import queue
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from planflow.runtime import slot_wake
from planflow.runtime.slot_wake import SlotWake, announce, wake_folder

HEARD_SECONDS = 5.0  # the bound on hearing a datagram sent on this machine


@pytest.fixture
def server(monkeypatch):
    """A Prefect API URL of its own, and a temporary folder of its own (short: a socket's
    path holds at most 107 bytes, and pytest's tmp_path is long)."""
    short = Path(tempfile.mkdtemp(prefix="pw"))
    monkeypatch.setattr(tempfile, "tempdir", str(short))
    monkeypatch.setattr(slot_wake, "_folders", {})
    monkeypatch.delenv("PLANFLOW_SLOT_WAKE", raising=False)
    with temporary_settings({PREFECT_API_URL: f"http://wake-{uuid.uuid4().hex[:8]}.test/api"}):
        yield short
    shutil.rmtree(short, ignore_errors=True)


def _listener() -> tuple[SlotWake, queue.Queue[str]]:
    heard: queue.Queue[str] = queue.Queue()
    return SlotWake(heard.put), heard


def test_a_run_hears_the_limits_another_gives_back_and_the_folder_is_private(server):
    first, heard_first = _listener()
    second, heard_second = _listener()
    try:
        announce("planflow-gpu-box-cpu-millicores")
        assert heard_first.get(timeout=HEARD_SECONDS) == "planflow-gpu-box-cpu-millicores"
        assert heard_second.get(timeout=HEARD_SECONDS) == "planflow-gpu-box-cpu-millicores"
        folder = wake_folder()
        assert folder is not None and folder.parent.parent == server
        for path in (folder, folder.parent):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    finally:
        first.close()
        second.close()
    assert not list(folder.iterdir()), "each run removes its socket when it closes"


def test_runs_of_another_server_do_not_hear_it(server):
    here, heard = _listener()
    try:
        with temporary_settings({PREFECT_API_URL: "http://another-server.test/api"}):
            announce("planflow-local-cpu-millicores")
        with pytest.raises(queue.Empty):
            heard.get(timeout=0.5)
    finally:
        here.close()


def test_a_gone_run_s_socket_is_removed_and_a_foreign_datagram_is_dropped(server):
    here, heard = _listener()
    try:
        folder = wake_folder()
        gone = folder / f"999999-dead{slot_wake.SOCKET_SUFFIX}"
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        dead.bind(str(gone))
        dead.close()  # its process died without removing it
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
            other.sendto(b"\xff\xfe not a name", str(here.path))  # not UTF-8: dropped
            other.sendto(b"", str(here.path))  # empty: does not stop the listener
        announce("planflow-local-mem-mib")
        assert heard.get(timeout=HEARD_SECONDS) == "planflow-local-mem-mib"
        assert not gone.exists()
    finally:
        here.close()


def test_a_folder_others_can_read_is_not_used_and_runs_poll(server, caplog):
    base = server / f"planflow-{os.getuid()}"
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    here, heard = _listener()
    assert here.path is None  # nothing bound: the run polls
    announce("planflow-local-cpu-millicores")  # sends nothing, raises nothing
    here.close()
    assert "not a folder private to this user" in caplog.text


WAKE_FOLDER = "from planflow.runtime.slot_wake import wake_folder; print(wake_folder())"


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare and root")
def test_runs_on_one_url_in_another_network_namespace_have_a_folder_of_their_own(server):
    """Two servers on http://127.0.0.1:4200 in two network namespaces (or containers sharing
    /tmp) are two servers: their runs took over each other's leases when the folder was
    keyed by the URL alone (a run started a 2-core step with its own limit at 1 core)."""
    env = dict(os.environ, PREFECT_API_URL="http://127.0.0.1:4200/api")
    here = subprocess.run([sys.executable, "-c", WAKE_FOLDER], env=env, capture_output=True, text=True, timeout=120)
    there = subprocess.run(
        ["unshare", "--net", "--fork", sys.executable, "-c", WAKE_FOLDER],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert here.returncode == 0 and there.returncode == 0, here.stderr[-2000:] + there.stderr[-2000:]
    assert "/planflow-" in here.stdout and "/planflow-" in there.stdout, here.stdout + there.stdout
    assert here.stdout.strip() != there.stdout.strip()
    again = subprocess.run([sys.executable, "-c", WAKE_FOLDER], env=env, capture_output=True, text=True, timeout=120)
    assert again.stdout == here.stdout  # the same namespace and URL: the same folder


def test_it_is_off_with_planflow_slot_wake_false(server, monkeypatch):
    monkeypatch.setenv("PLANFLOW_SLOT_WAKE", "false")
    assert wake_folder() is None
    here, _ = _listener()
    assert here.path is None
    here.close()


def test_a_count_said_with_a_limit_reaches_the_listener_and_a_malformed_one_is_left_out(server):
    """`announce(limit, slots)` and `announce_taken(limit, slots)` say how many slots moved:
    the listener gets the count as a second argument (RunSlots counts it into its reads);
    without one, or with one that is not a count, it gets the limit alone (its read of it
    is then stale, as before)."""
    from planflow.runtime.slot_wake import announce_taken

    heard: queue.Queue[tuple] = queue.Queue()
    here = SlotWake(lambda *args: heard.put(("freed", *args)), lambda *args: heard.put(("taken", *args)))
    try:
        announce("planflow-local-cpu-millicores", 1500)
        assert heard.get(timeout=HEARD_SECONDS) == ("freed", "planflow-local-cpu-millicores", 1500)
        announce_taken("planflow-local-mem-mib", 2048)
        assert heard.get(timeout=HEARD_SECONDS) == ("taken", "planflow-local-mem-mib", 2048)
        announce_taken("planflow-local-turn")
        assert heard.get(timeout=HEARD_SECONDS) == ("taken", "planflow-local-turn")
        here.hear("planflow-local-gpu -3")  # not a count: the limit alone
        assert heard.get(timeout=HEARD_SECONDS) == ("freed", "planflow-local-gpu")
        here.hear("planflow-local-gpu 99999999999")  # more digits than any limit holds: left out
        assert heard.get(timeout=HEARD_SECONDS) == ("freed", "planflow-local-gpu")
    finally:
        here.close()


def test_a_change_heard_while_a_read_was_on_its_way_errs_towards_free():
    """A read of a limit, then changes heard (shared_reads.HeardChanges): slots given back
    since it began and slots taken since it was answered are counted into it; a take heard
    while it was on its way may be in it already, so it is not counted twice (a step would
    wait for slots that are free)."""
    from planflow.runtime.shared_reads import HeardChanges, LimitSeen

    cpu = "planflow-local-cpu-millicores"
    read = (100.0, LimitSeen(2000, 1000), 100.2)  # began, as read, answered
    changes = HeardChanges()
    for at, change in [(99.0, -1000), (100.1, +1000), (100.1, -1000), (100.3, +500)]:
        changes.heard(cpu, change, at=at)
    # -1000 after it began and +500 after it was answered count; the +1000 heard while it
    # was on its way may be in it: not counted; the -1000 heard before it began is in it
    assert changes.up_to_date(cpu, read) == LimitSeen(2000, 500)
    assert changes.up_to_date("planflow-local-mem-mib", (100.0, LimitSeen(3072, 1024), 100.2)).active_slots == 1024
    changes.heard(cpu, -5000, at=100.4)
    assert changes.up_to_date(cpu, read) == LimitSeen(2000, 0)  # never fewer than none held
    assert changes.up_to_date(cpu, (100.0, None, 100.2)) is None  # a limit that does not exist
    changes.heard(cpu, +1000, at=200.0)  # heard long after: what is older than any read stands is dropped
    assert changes.up_to_date(cpu, (199.0, LimitSeen(2000, 0), 199.5)) == LimitSeen(2000, 1000)
