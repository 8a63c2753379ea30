"""The scale-out server: `planflow server up --db postgres` runs the Prefect server on a
real PostgreSQL (Debian's), started and stopped by planflow, and its data outlives a
restart. Missing PostgreSQL skips here with the install command, and fails under CI."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from planflow.ops import server
from planflow.ops.postgres import INSTALL_HINT, Cluster, PostgresError, bin_dir, make_state_private
from planflow.settings import StatePaths

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def paths():
    try:
        bin_dir()
    except PostgresError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(f"PostgreSQL is not installed: {INSTALL_HINT}")
    # Not pytest's tmp_path: its parent is closed to other users, and as root the
    # database runs as the `postgres` account, which must reach its folder.
    home = Path(tempfile.mkdtemp(prefix="planflow-pg-"))
    state = StatePaths(home)
    yield state
    server.down(state)
    shutil.rmtree(home, ignore_errors=True)


def sql(cluster: Cluster, query: str) -> str:
    command = [str(bin_dir() / "psql"), "-h", "127.0.0.1", "-p", str(cluster.port()), "-U", "planflow"]
    done = subprocess.run(
        [*command, "-d", "prefect", "-tAc", query],
        env={**os.environ, "PGPASSWORD": cluster.password()},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def create_flow_run(url: str, name: str) -> str:
    with httpx.Client(base_url=url, timeout=30) as client:
        flow = client.post("/flows/", json={"name": "pg-check"}).raise_for_status().json()
        run = client.post("/flow_runs/", json={"flow_id": flow["id"], "name": name}).raise_for_status().json()
    return run["id"]


def test_the_server_runs_on_postgres_and_its_runs_survive_a_restart(paths):
    state = server.up(paths, port=server.free_port(), db="postgres")
    assert state.running and paths.recorded()["db"] == "postgres"
    cluster = Cluster(paths)
    assert cluster.running()
    assert stat.S_IMODE(cluster.password_file.stat().st_mode) == 0o600
    assert cluster.password() not in paths.server_file.read_text()  # the password stays in its own file

    run_id = create_flow_run(state.url, "on-postgres")
    # the run is a row of PostgreSQL's prefect database, not of a SQLite file
    assert sql(cluster, f"SELECT name FROM flow_run WHERE id = '{run_id}'") == "on-postgres"
    assert not list(paths.prefect_home.glob("*.db"))

    server.down(paths)
    assert not cluster.running()  # `down` stops the database too
    # started again without naming the database (`stack up`, a command that starts the
    # server): the project's, not an empty SQLite one
    state = server.up(paths, port=server.free_port())
    assert paths.recorded()["db"] == "postgres" and cluster.running()
    with httpx.Client(base_url=state.url, timeout=30) as client:
        assert client.get(f"/flow_runs/{run_id}").raise_for_status().json()["name"] == "on-postgres"


def test_a_server_on_another_database_or_an_unknown_one_is_named_with_the_fix(paths):
    with pytest.raises(server.StackError, match=r"db='mysql' is not a database planflow runs\. Fix: --db sqlite"):
        server.up(paths, port=server.free_port(), db="mysql")
    server.up(paths, port=server.free_port(), db="sqlite")
    with pytest.raises(server.StackError, match=r"runs on sqlite, not postgres\. Fix: `planflow server down`"):
        server.up(paths, db="postgres")


def test_a_first_start_on_the_other_database_says_it_starts_empty(paths):
    """`server up --db postgres` after SQLite started from an empty database without a
    word: the project's runs, deployments and blocks seemed lost."""
    assert server.new_database_note(paths, "postgres") is None  # nothing held anywhere yet
    server.up(paths, port=server.free_port(), db="sqlite")
    server.down(paths)
    note = server.new_database_note(paths, "postgres")
    assert note is not None and note.startswith("a new, empty PostgreSQL database")
    assert "stay in its sqlite database" in note and "`planflow server up --db sqlite` finds them again" in note
    # commands that work in any project (`blocks apply` alone needs a blocks/ folder)
    assert "`planflow pools set NAME ...` (or `planflow blocks apply` from a blocks/ folder)" in note
    assert "`planflow stack up` (the automations and their remediation worker)" in note
    assert server.new_database_note(paths, "sqlite") is None  # back to the one that holds them
    server.up(paths, port=server.free_port(), db="postgres")
    server.down(paths)
    assert server.new_database_note(paths, "postgres") is None  # started before: not new


def test_the_state_folder_keeps_postgres_path_to_its_data_when_made_private_again(paths):
    """As root the cluster runs as `postgres`, reached through the state folder (0711).
    `stack up` (and `server up` after a server killed while its database ran on) made that
    folder 0700 again: the database failed at its next checkpoint ("could not open file
    global/pg_control: Permission denied") and every API call answered 500."""
    state = server.up(paths, port=server.free_port(), db="postgres")
    cluster = Cluster(paths)
    make_state_private(paths)  # what `stack up` and `server up` do to the state folder
    if os.geteuid() == 0:
        assert stat.S_IMODE(paths.home.stat().st_mode) == 0o711
        assert stat.S_IMODE(cluster.password_file.stat().st_mode) == 0o600  # planflow's own files stay private
    assert sql(cluster, "CHECKPOINT") == "CHECKPOINT"  # the database still reaches its own files
    with httpx.Client(base_url=state.url, timeout=30) as client:
        assert client.post("/flow_runs/filter", json={"limit": 1}).status_code == 200
