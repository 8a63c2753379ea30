"""The `planflow` command, run as a user runs it, against the session's server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TESTS, free_port

PLANFLOW = [str(Path(sys.executable).with_name("planflow"))]


def planflow(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*PLANFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def toy_env(cli_env):
    env = dict(cli_env)
    env["PLANFLOW_PIPELINES"] = ",".join(
        [
            "toy_dags:diamond",
            "toy_dags:failing",
            str(TESTS / "fixtures" / "diamond.yaml"),
            str(TESTS / "fixtures" / "cyclic.yaml"),
        ]
    )
    env["COLUMNS"] = "200"
    return env


def test_pipelines_lists_examples_and_extras_and_reports_broken_ones(toy_env):
    out = planflow("pipelines", env=toy_env)
    assert "toy-diamond" in out.stdout and "toy-yaml" in out.stdout
    assert out.returncode == 1  # cyclic.yaml is broken, and said so
    assert "cycle: numbers -> total -> report -> numbers" in out.stderr


def test_describe_one_pipeline(toy_env):
    out = planflow("pipelines", "toy-diamond", env=toy_env)
    assert out.returncode == 0, out.stderr
    assert "critical_path_seconds" in out.stdout and "total, scaled" in out.stdout


def test_run_with_params_prints_the_summary_as_json(toy_env):
    out = planflow("run", "toy-diamond", "--param", "n=5", "--param", "factor=1", "--json", env=toy_env)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["params"] == {"n": 5, "factor": 1.0}
    assert result["steps"]["report"]["metrics"] == {"value": 20.0}


def test_run_shows_progress_and_the_run_address(toy_env):
    out = planflow("run", "toy-yaml", env=toy_env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "4/4" in out.stdout and "flow run: http://127.0.0.1:" in out.stdout


def test_unknown_pipeline_and_bad_params_are_clear(toy_env):
    out = planflow("run", "toy-diamnd", env=toy_env)
    assert out.returncode == 1
    assert "no pipeline named 'toy-diamnd'. Did you mean 'toy-diamond'?" in out.stderr
    out = planflow("run", "toy-diamond", "--param", "n=lots", env=toy_env)
    assert out.returncode == 1 and "parameter 'n'='lots' is not a int" in out.stderr
    out = planflow("run", "toy-diamond", "--param", "nope", env=toy_env)
    assert out.returncode == 1 and "--param 'nope' is not KEY=VALUE" in out.stderr


def test_a_failing_pipeline_exits_nonzero_naming_the_step(toy_env):
    out = planflow("run", "toy-failing", env=toy_env)
    assert out.returncode == 1
    assert "step 'broken' of pipeline 'toy-failing' failed: ValueError: cannot use 4 numbers" in out.stderr


def test_a_dead_server_gives_a_clear_error(toy_env):
    env = dict(toy_env, PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api")
    out = planflow("run", "toy-diamond", env=env, timeout=60)
    assert out.returncode == 1
    assert "does not answer. Fix: start it, or unset PREFECT_API_URL" in out.stderr


def test_env_prints_exports_for_prefect_commands(toy_env):
    out = planflow("env", env=toy_env)
    assert f"export PREFECT_API_URL={toy_env['PREFECT_API_URL']}" in out.stdout
    assert "export PREFECT_HOME=" in out.stdout


def test_plan_prints_the_plan_without_running(toy_env, tmp_path):
    gantt = tmp_path / "plan.png"
    out = planflow("plan", "toy-diamond", "--json", "--gantt", str(gantt), env=toy_env)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert [t["name"] for t in result["plan"]["tasks"]][0] == "numbers"
    assert result["figures"]["makespan_s"] >= result["figures"]["lower_bound_s"] > 0
    assert {row["estimate"].split(":")[0] for row in result["components"]} <= {"declared", "history"}
    assert result["totals"]["components"] == 4
    assert gantt.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = planflow("plan", "toy-diamond", env=toy_env)
    assert "makespan" in table.stdout and "lower bound" in table.stdout and "critical path" in table.stdout


def test_bench_psplib_writes_one_row_per_instance(toy_env, tmp_path, psplib):
    target = tmp_path / "rows.csv"
    out = planflow(
        "bench", "psplib", str(psplib / "j30" / "j301_1.sm"), "--time-limit", "5", "--csv", str(target), env=toy_env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    header, row = target.read_text().splitlines()[:2]
    assert header.startswith("instance,jobs,makespan,lower_bound,status")
    assert row.startswith("j301_1,30,43.0,")  # the proven optimum
    missing = planflow("bench", "psplib", str(tmp_path / "nope.sm"), env=toy_env)
    assert missing.returncode == 1 and "no such file or folder" in missing.stderr
