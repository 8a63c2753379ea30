"""The `planflow` command, run as a user runs it, against the session's server."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import TESTS, free_port

PLANFLOW = [str(Path(sys.executable).with_name("planflow"))]
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def planflow(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PLANFLOW, *args], env=env, cwd=TESTS.parent, capture_output=True, text=True, timeout=timeout
    )


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
    listed = planflow("pipelines", "--json", env=toy_env)
    assert listed.returncode == 1 and "cycle: numbers -> total -> report -> numbers" in listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}  # stdout holds the JSON alone
    assert rows["toy-diamond"]["error"] is None and rows["toy-diamond"]["components"] == 4
    assert rows["toy-diamond"]["parameters"] == {"n": 4, "factor": 2.0}
    assert "cycle" in next(row["error"] for row in rows.values() if row["error"] is not None)


def test_describe_one_pipeline(toy_env):
    out = planflow("pipelines", "toy-diamond", env=toy_env)
    assert out.returncode == 0, out.stderr
    assert "critical path (s)" in out.stdout and "CPU core·s" in out.stdout and "total, scaled" in out.stdout
    header = next(line for line in out.stdout.splitlines() if "step" in line and "after" in line)
    cells = [cell.strip() for cell in header.strip("┃ ").split("┃")]
    assert cells[-4:] == ["runs in", "cache", "retries", "timeout (s)"]
    numbers = next(line for line in out.stdout.splitlines() if line.startswith("│ numbers "))
    assert [cell.strip() for cell in numbers.strip("│ ").split("│")][-4:] == ["thread", "run", "0", "-"]
    described = json.loads(planflow("pipelines", "toy-diamond", "--json", env=toy_env).stdout)
    assert [step["step"] for step in described["steps"]][0] == "numbers"
    first = described["steps"][0]
    assert first["after"] == [] and first["runs_in"] == "thread" and first["timeout_seconds"] is None
    assert described["totals"]["components"] == len(described["steps"]) == 4


def test_run_with_params_prints_the_summary_as_json(toy_env):
    out = planflow("run", "toy-diamond", "--param", "n=5", "--param", "factor=1", "--json", env=toy_env)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["params"] == {"n": 5, "factor": 1.0}
    assert result["steps"]["report"]["metrics"] == {"value": 20.0}


def test_run_shows_progress_and_the_run_address(toy_env):
    out = planflow("run", "toy-yaml", env=toy_env)
    assert out.returncode == 0, out.stderr[-2000:]
    [bar] = [line for line in out.stdout.splitlines() if line.startswith("toy-yaml ━")]
    assert "4/4" in bar and "running:" not in bar, bar  # the finished bar names no running step
    said = out.stdout + out.stderr  # Prefect's line per hook of the run's end: noise, on the server only
    assert "Running hook '" not in said and "finished running successfully" not in said, said[-2000:]
    assert "Finished in state Completed()" in said  # the run's own lines still show
    ui = toy_env["PREFECT_API_URL"].removesuffix("/api")
    [link] = re.findall(rf"^flow run: ({re.escape(ui)}/v2/runs/flow-run/{UUID}\?tab=Artifacts)$", out.stdout, re.M)
    # The link is served by the UI that reads `tab` (the new one, under /v2): its route
    # for a flow run takes Artifacts as a tab.
    page = httpx.get(link, headers={"Accept": "text/html"}, timeout=10)
    assert page.status_code == 200 and str(page.url) == link  # no redirect to the old UI
    [script] = re.findall(r'src="(/v2/assets/index-[^"]+\.js)"', page.text)
    bundle = httpx.get(ui + script, timeout=10).text
    assert "tab:" in bundle and "`Logs`,`TaskRuns`,`SubflowRuns`,`Artifacts`" in bundle


def test_unknown_pipeline_and_bad_params_are_clear(toy_env):
    for command in ("run", "plan"):  # a name the project does not have: a usage error (run: 1)
        out = planflow(command, "toy-diamnd", env=toy_env)
        assert out.returncode == 2, out.stderr
        assert "no pipeline named 'toy-diamnd'. Did you mean 'toy-diamond'?" in out.stderr
    out = planflow("plan", "toy-diamond", "--param", "n", env=toy_env)
    assert (out.returncode, out.stderr) == (2, "error: --param n is not KEY=VALUE. Fix: --param n=VALUE\n")
    out = planflow("run", "toy-diamond", "--param", "n=lots", env=toy_env)
    assert out.returncode == 2  # a usage error
    assert out.stderr.strip() == (
        "error: --param n=lots: parameter 'n' of pipeline 'toy-diamond' takes an int, got 'lots'. Fix: e.g. --param n=4"
    )
    out = planflow("run", "toy-diamond", "--param", "n", env=toy_env)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == "error: --param n is not KEY=VALUE. Fix: --param n=VALUE\n"  # nothing else
    out = planflow("run", "toy-diamond", "--param", "=5", env=toy_env)
    assert out.stderr == "error: --param =5 is not KEY=VALUE. Fix: name the parameter, e.g. --param seed=3\n"
    out = planflow("run", "toy-diamond", "--param", "n=5", "--param", "n=6", env=toy_env)  # the last had won
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == "error: --param n is given twice, as '5' and '6'. Fix: give it once, e.g. --param n=6\n"


def test_a_failing_pipeline_exits_nonzero_naming_the_step(toy_env):
    out = planflow("run", "toy-failing", env=toy_env)
    assert out.returncode == 1
    ui = toy_env["PREFECT_API_URL"].removesuffix("/api")
    [error] = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert re.fullmatch(
        r"error: step 'broken' of pipeline 'toy-failing' failed: ValueError: cannot use 4 numbers\. "
        rf"Its log and traceback: {re.escape(ui)}/v2/runs/flow-run/{UUID}\?tab=Logs",
        error,
    ), error
    # the traceback is in the run's log on the server, not in the terminal; the run's other lines are
    assert "Traceback" not in out.stdout + out.stderr
    assert "Finished in state Failed" in out.stdout + out.stderr
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    run_id = re.search(rf"/flow-run/({UUID})", error).group(1)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    assert any("Traceback" in log.message and "cannot use 4 numbers" in log.message for log in logs)


def test_a_dead_server_gives_a_clear_error(toy_env):
    env = dict(toy_env, PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api")
    out = planflow("run", "toy-diamond", env=env, timeout=60)
    assert out.returncode == 1
    assert "does not answer: nothing answers there (" in out.stderr, out.stderr
    assert "Fix: start it, or unset PREFECT_API_URL" in out.stderr


def test_output_to_a_pipe_keeps_whole_lines(toy_env):
    """Without COLUMNS, rich cuts output that is not a terminal to 80 columns."""
    env = {k: v for k, v in toy_env.items() if k != "COLUMNS"}
    out = planflow("pipelines", env=env)
    yaml_file = str((TESTS / "fixtures" / "diamond.yaml").relative_to(TESTS.parent))  # shown from the cwd
    [row] = [line for line in out.stdout.splitlines() if "toy-yaml" in line]
    assert yaml_file in row and len(row) > 80
    assert "…" not in out.stdout
    out = planflow("plan", "toy-diamond", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "…" not in out.stdout
    assert any(line.startswith("makespan ") and "list scheduling" in line for line in out.stdout.splitlines())


def test_pools_ls_ends_without_prefects_flush_noise(cli_env):
    out = planflow("pools", "ls", env=cli_env)
    assert out.returncode == 0, out.stderr
    assert "local" in out.stdout
    assert "Still processing items" not in out.stdout + out.stderr
    assert out.stderr == ""


def test_pools_set_changes_only_the_options_given_and_refuses_a_backup_that_is_not_a_pool(cli_env):
    from planflow.prefect.blocks import ResourcePool

    name = f"trial-{uuid.uuid4().hex[:8]}"
    out = planflow("pools", "set", name, "--gpu", "1", env=cli_env)  # a new pool needs its size
    assert out.returncode == 2 and f"Fix: planflow pools set {name} --cpu 2 --mem-gib 4" in out.stderr, out.stderr
    made = planflow(
        *("pools", "set", name, "--cpu", "2", "--mem-gib", "4", "--gpu", "1", "--cost-per-hour", "3"),
        *("--work-pool", f"{name}-work"),  # a work pool of its own: never a second block for local-process
        env=cli_env,
    )
    assert made.returncode == 0, made.stderr
    # the work pool it names does not exist: said, with what needs it and the fix (not refused:
    # in-process runs need none)
    assert f"note: the Prefect work pool '{name}-work' does not exist" in made.stderr, made.stderr
    assert f"Fix: prefect work-pool create {name}-work --type process" in made.stderr, made.stderr
    try:
        wrong = planflow("pools", "set", name, "--backup-pool", "nosuch", env=cli_env)
        assert wrong.returncode == 2, wrong.stdout + wrong.stderr
        assert "--backup-pool 'nosuch' is not a pool" in wrong.stderr and "local" in wrong.stderr, wrong.stderr
        assert planflow("pools", "set", name, "--backup-pool", name, env=cli_env).returncode == 2  # itself
        assert planflow("pools", "set", name, "--backup-pool", "local", env=cli_env).returncode == 0
        resized = planflow("pools", "set", name, "--cpu", "3", env=cli_env)
        assert resized.returncode == 0, resized.stderr
        assert "does not exist" not in resized.stderr  # said once, when the work pool was named
        pool = ResourcePool.load(name)
        assert (pool.cpu, pool.mem_gib, pool.gpu, pool.cost_per_hour) == (3, 4, 1, 3)
        assert (pool.work_pool, pool.backup_pool) == (f"{name}-work", "local")  # kept: not given again
        assert planflow("pools", "set", name, "--backup-pool", "", env=cli_env).returncode == 0
        assert ResourcePool.load(name).backup_pool is None
    finally:
        planflow("pools", "rm", name, env=cli_env)


def test_plan_and_run_on_another_pool_with_pool(toy_env):
    """A pool of one's own, used in process: `planflow run` had no way to name it (the
    flow's local_pool was refused as an unknown --param, the fix said --mode distributed)."""
    name = f"own-{uuid.uuid4().hex[:8]}"
    made = planflow("pools", "set", name, "--cpu", "3", "--mem-gib", "2", "--work-pool", f"{name}-work", env=toy_env)
    assert made.returncode == 0, made.stderr
    try:
        planned = planflow("plan", "toy-diamond", "--pool", name, "--json", env=toy_env)
        assert planned.returncode == 0, planned.stderr[-2000:]
        assert {row["pool"] for row in json.loads(planned.stdout)["components"]} == {name}
        ran = planflow("run", "toy-diamond", "--pool", name, "--json", env=toy_env)
        assert ran.returncode == 0, ran.stderr[-2000:]
        result = json.loads(ran.stdout)
        assert {step["pool"] for step in result["steps"].values()} == {name}, result["steps"]
        unknown = planflow("plan", "toy-diamond", "--pool", "no-such-pool", env=toy_env)
        assert unknown.returncode == 2 and "--pool no-such-pool: no ResourcePool block" in unknown.stderr, (
            unknown.stderr[-2000:]
        )  # a usage error, as `run` says it (it exited 1 with the planner's words)
        # run: refused before any flow run exists (it made a Failed run, which the failure alerts count)
        refused = planflow("run", "toy-diamond", "--pool", "no-such-pool", env=toy_env)
        assert refused.returncode == 2 and "--pool no-such-pool: no ResourcePool block" in refused.stderr
        assert "/flow-run/" not in refused.stderr + refused.stdout, refused.stderr[-2000:]
        dead = {**toy_env, "PLANFLOW_DASK_ADDRESS": f"tcp://127.0.0.1:{free_port()}"}
        no_cluster = planflow("run", "toy-diamond", "--mode", "dask", env=dead)
        assert no_cluster.returncode == 1 and "planflow dask up" in no_cluster.stderr, no_cluster.stderr[-2000:]
        assert "/flow-run/" not in no_cluster.stderr + no_cluster.stdout, no_cluster.stderr[-2000:]
    finally:
        planflow("pools", "rm", name, env=toy_env)


def test_an_output_file_or_port_that_cannot_be_used_is_a_usage_error_not_a_traceback(toy_env, tmp_path):
    missing = tmp_path / "no-such-folder" / "plan.png"
    out = planflow("plan", "toy-diamond", "--gantt", str(missing), env=toy_env)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"--gantt {missing}: cannot write it (folder {missing.parent} does not exist)" in out.stderr
    out = planflow("calendar", "local", "--png", str(tmp_path), env=toy_env)
    assert out.returncode == 2 and "cannot write it (it is a folder)" in out.stderr, out.stderr[-2000:]
    planflow("pools", "set", "png-second", "--cpu", "1", "--mem-gib", "1", env=toy_env)
    try:  # two pools and no POOL: refused before the calendar is printed (it printed it all, then failed)
        out = planflow("calendar", "--png", str(tmp_path / "c.png"), env=toy_env)
    finally:
        planflow("pools", "rm", "png-second", env=toy_env)
    assert out.returncode == 2 and "--png draws one pool: name it" in out.stderr, out.stderr[-2000:]
    assert "pool local" not in out.stdout and not (tmp_path / "c.png").exists(), out.stdout[-2000:]
    out = planflow("serve", "toy-diamond", "--port", "80000", env=toy_env)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "65535" in out.stderr, out.stderr[-2000:]
    for command in (("dask", "up", "--port"), ("server", "up", "--port"), ("stack", "up", "--bridge-port")):
        out = planflow(*command, "80000", env=toy_env)  # dask up printed OverflowError's traceback
        assert out.returncode == 2 and "Traceback" not in out.stderr and "65535" in out.stderr, out.stderr[-2000:]
    out = planflow("serve", "toy-diamond", "--port", "65530", "--replicas", "8", env=toy_env)
    assert out.returncode == 2 and "past 65535. Fix: a lower --port" in out.stderr, out.stderr[-2000:]
    out = planflow("serve", "toy-diamond", "--tag", " ", env=toy_env)
    assert out.returncode == 2 and "a tag must not be empty. Fix: e.g. --tag release" in out.stderr, out.stderr[-2000:]


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
    table = planflow("plan", "toy-diamond", "--gantt", str(tmp_path / "table.png"), env=toy_env)
    assert "makespan" in table.stdout and "lower bound" in table.stdout and "critical path" in table.stdout
    assert f"wrote {tmp_path / 'table.png'}" in " ".join(table.stdout.split())  # as calendar --png says it
    bad = planflow("plan", "toy-diamond", "--param", "nn=8", env=toy_env)  # planned for these parameters
    assert bad.returncode == 2 and "nn" in bad.stderr and "n" in bad.stderr, bad.stderr[-2000:]  # a usage error


def test_plan_needs_no_required_parameter_and_a_run_does(toy_env):
    """A plan is a preview: a pipeline with a parameter every run must be given (declared
    `required:` in YAML) is planned without it, saying so; a run without it is refused."""
    needs_input = TESTS / "fixtures" / "needs_input.yaml"
    env = {**toy_env, "PLANFLOW_PIPELINES": toy_env["PLANFLOW_PIPELINES"] + f",{needs_input}"}
    planned = planflow("plan", "toy-needs-input", "--json", env=env)
    assert planned.returncode == 0, planned.stderr[-2000:]
    document = json.loads(planned.stdout)
    assert document["not_given"] == ["n"]
    assert {row["component"] for row in document["components"]} == {"numbers", "total"}
    table = planflow("plan", "toy-needs-input", env=env)
    assert table.returncode == 0 and "planned without n (required to run, not given here)" in table.stdout, table.stdout
    refused = planflow("run", "toy-needs-input", env=env)
    assert refused.returncode == 2 and "parameter 'n' is required" in refused.stderr, refused.stderr[-2000:]
    ran = planflow("run", "toy-needs-input", "--param", "n=3", "--json", env=env)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert json.loads(ran.stdout)["params"] == {"n": 3}


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


# -- a user's project whose pipelines fail to load ------------------------------------------
GOOD = """
from planflow import Pipeline, component


@component(cpu=1, mem_gib=0.1, est_seconds=0.1)
def numbers(n: int = 4, scale: float = 1.0, fast: bool = False) -> list[float]:
    return [i * scale for i in range(n)]


@component(cpu=1, mem_gib=0.1, est_seconds=0.1)
def total(numbers: list[float]) -> float:
    return sum(numbers)


pipeline = Pipeline("good", [numbers, total])
"""
# A parameter that is a pydantic model, and a step that fails when told to.
CONFIGURED = """
from pydantic import BaseModel

from planflow import Pipeline, component


class Config(BaseModel):
    c: float = 1.0
    max_iter: int = 200
    fail: bool = False


@component(cpu=1, mem_gib=0.1, est_seconds=0.1)
def fit(cfg: Config = Config()) -> float:
    if cfg.fail:
        raise RuntimeError("told to fail")
    return cfg.c * cfg.max_iter


pipeline = Pipeline("configured", [fit])
"""
BROKEN = {
    # folder -> (flow.py, what `planflow run <folder>` must print after "failed to load:")
    "cyc": (
        """
from planflow import Pipeline, Step, component


@component(cpu=1, mem_gib=0.1, est_seconds=0.1)
def a(x: int = 1) -> int:
    return x


@component(cpu=1, mem_gib=0.1, est_seconds=0.1)
def b(a: int) -> int:
    return a


pipeline = Pipeline("cyc", [Step("a", a, after=("b",)), Step("b", b)])
""",
        "pipeline 'cyc' is invalid:\n  - cycle: a -> b -> a.",
    ),
    "negcpu": (
        """
from planflow import Pipeline, component


@component(cpu=-1, mem_gib=0.1, est_seconds=0.1)
def numbers(n: int = 4) -> list[int]:
    return list(range(n))


pipeline = Pipeline("negcpu", [numbers])
""",
        "ComponentSpecError: component 'numbers' (flows.negcpu.flow.numbers) has 1 problem:\n"
        "  - cpu=-1: must be a number > 0",
    ),
    "imports": ("import not_a_module_anywhere\n", "ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
    "undefined": (
        "from planflow import Pipeline\n\npipeline = Pipeline('undefined', [numbrs])\n",
        "NameError: name 'numbrs' is not defined",
    ),
    # rich markup in a message must be printed as it is, not crash the printer
    "brackets": (
        'raise RuntimeError("needs [/data] mounted and [bold]x")\n',
        "RuntimeError: needs [/data] mounted and [bold]x",
    ),
}
TYPO_YAML = "name: typo\nsteps:\n  - name: numbers\n    uses: flows.good.flow:numbrs\n"


CHATTY = """
from planflow import Pipeline, component


@component(cpu=0.5, mem_gib=0.25, est_seconds=0.2)
def said(n: int = 2) -> int:
    print("a thread step prints")
    return n


@component(cpu=0.5, mem_gib=0.25, est_seconds=0.5, isolation="process")
def shouted(said: int) -> int:
    print("an isolated step prints")
    return said + 1


pipeline = Pipeline("chatty", [said, shouted])
"""


SLEEPY = """
import os
import time
from pathlib import Path

from planflow import Pipeline, component


@component(cpu=0.5, mem_gib=0.25, est_seconds=60, isolation="process")
def sleeper(marker: str = "") -> int:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(120)
    return 1


@component(cpu=0.5, mem_gib=0.25, est_seconds=60)
def napper(marker: str = "") -> int:  # in process: a thread, which Python cannot stop
    Path(marker + ".thread").write_text("started")
    time.sleep(120)
    return 1


pipeline = Pipeline("sleepy", [sleeper, napper])
"""


TOO_BIG = """
from planflow import Pipeline, component


@component(cpu=64, mem_gib=0.25, est_seconds=1)
def crunch(k: int = 3) -> int:
    return k * 2


pipeline = Pipeline("too-big", [crunch])
"""


@pytest.fixture(scope="module")
def user_project(tmp_path_factory) -> Path:
    """A user's own Prefect project: its own `flows/` package with one good and several
    broken pipelines, and a YAML pipeline whose `uses:` has a typo."""
    root = tmp_path_factory.mktemp("user-project")
    (root / "pyproject.toml").write_text("[project]\nname = 'user-project'\n")
    (root / "flows").mkdir()
    (root / "flows" / "__init__.py").write_text("")
    sources = [
        ("good", GOOD),
        ("configured", CONFIGURED),
        ("chatty", CHATTY),
        ("sleepy", SLEEPY),
        ("too_big", TOO_BIG),
        *((name, code) for name, (code, _) in BROKEN.items()),
    ]
    for folder, source in sources:
        (root / "flows" / folder).mkdir()
        (root / "flows" / folder / "__init__.py").write_text("")
        (root / "flows" / folder / "flow.py").write_text(source)
    (root / "pipelines").mkdir()
    (root / "pipelines" / "typo.yaml").write_text(TYPO_YAML)
    return root


def planflow_in(project: Path, *args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PLANFLOW, *args], env=dict(env, COLUMNS="200"), cwd=project, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("folder", sorted(BROKEN))
def test_run_shows_the_pipelines_own_load_error(user_project, cli_env, folder):
    out = planflow_in(user_project, "run", folder, env=cli_env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.startswith(f"error: pipeline '{folder}' (flows.{folder}.flow) failed to load:\n"), out.stderr
    assert BROKEN[folder][1] in out.stderr
    assert "no pipeline named" not in out.stderr and "Traceback" not in out.stdout + out.stderr


def test_run_shows_a_yaml_typo_in_uses(user_project, cli_env):
    out = planflow_in(user_project, "run", "typo", env=cli_env)
    assert out.returncode == 1
    expected = (
        "pipeline 'typo' is invalid:\n  - step 1 ('numbers'): module 'flows.good.flow' has no 'numbrs'. "
        "Did you mean 'numbers'?"
    )
    assert expected in out.stderr
    assert "no pipeline named" not in out.stderr and "Traceback" not in out.stderr


def test_pipelines_lists_each_broken_source_as_failed_without_a_traceback(user_project, cli_env):
    out = planflow_in(user_project, "pipelines", env=cli_env)
    assert out.returncode == 1
    assert "Traceback" not in out.stdout + out.stderr
    rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.count("│") > 2}
    assert set(rows) == {"good", "configured", "chatty", "sleepy", "too-big", "typo", *BROKEN}, out.stdout
    assert "failed" not in rows["good"] and "failed" not in rows["configured"]
    assert all(rows[name].split("│")[2].strip() == "failed to load" for name in [*BROKEN, "typo"])
    for folder, (_, message) in BROKEN.items():
        assert f"flows.{folder}.flow failed to load: {message.splitlines()[0]}" in out.stderr
    assert "\npipelines/typo.yaml failed to load: " in out.stderr  # as the table shows it: from the project


def test_two_pipelines_with_one_name_are_both_refused_naming_each_other(tmp_path, cli_env):
    """A YAML pipeline named like a Python one was listed twice, and `planflow run NAME` ran
    the first found, saying nothing (their flow runs and history would mix in Prefect)."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'dups'\n")
    (tmp_path / "flows" / "twice").mkdir(parents=True)
    (tmp_path / "flows" / "__init__.py").write_text("")
    (tmp_path / "flows" / "twice" / "__init__.py").write_text("")
    (tmp_path / "flows" / "twice" / "flow.py").write_text(GOOD.replace('Pipeline("good"', 'Pipeline("twice"'))
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "twice.yaml").write_text("name: twice\nsteps:\n  - uses: flows.twice.flow:numbers\n")
    listed = planflow_in(tmp_path, "pipelines", env=cli_env)
    assert listed.returncode == 1 and "Traceback" not in listed.stderr, listed.stdout + listed.stderr
    assert (
        "flows.twice.flow failed to load: pipeline name 'twice' is also the name of the pipeline in " in listed.stderr
    )
    assert "pipelines/twice.yaml failed to load: pipeline name 'twice' is also the name" in listed.stderr
    run = planflow_in(tmp_path, "run", "twice", env=cli_env)
    assert run.returncode == 1 and "Fix: rename one of them" in run.stderr, run.stdout + run.stderr
    # one YAML pipeline found twice (also named in PLANFLOW_PIPELINES) is one pipeline, listed once
    (tmp_path / "flows" / "twice" / "flow.py").write_text(GOOD.replace('Pipeline("good"', 'Pipeline("once"'))
    again = planflow_in(tmp_path, "pipelines", env=dict(cli_env, PLANFLOW_PIPELINES="pipelines/twice.yaml"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert len([line for line in again.stdout.splitlines() if "│ twice " in line]) == 1, again.stdout


def test_param_errors_name_parameter_value_and_type_all_at_once(user_project, cli_env):
    out = planflow_in(user_project, "run", "good", "-p", "n=abc", "-p", "fast=maybe", "-p", "scal=2", env=cli_env)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: 3 problems with --param:\n"
        "  - --param n=abc: parameter 'n' of pipeline 'good' takes an int, got 'abc'. Fix: e.g. --param n=4\n"
        "  - --param fast=maybe: parameter 'fast' of pipeline 'good' takes a bool, got 'maybe'. "
        "Fix: e.g. --param fast=false\n"
        "  - --param scal=2: pipeline 'good' has no parameter 'scal'. Did you mean 'scale'? "
        "Its parameters: fast, n, scale"
    )


def test_run_json_keeps_stdout_for_the_json_when_components_print(user_project, cli_env):
    """A component's print(), in a thread or in a process of its own, came on stdout before
    the JSON: `planflow run NAME --json > r.json` was not JSON."""
    out = planflow_in(user_project, "run", "chatty", "--json", env=cli_env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["steps"]["shouted"]["state"] == "Completed", out.stdout[:500]
    assert "a thread step prints" in out.stderr and "an isolated step prints" in out.stderr


def test_ctrl_c_stops_a_run_and_its_isolated_steps_process_at_once(user_project, cli_env, tmp_path):
    """SIGINT ended `planflow run` only once its isolated step's process ended by itself
    (56 s in a trial), and the step's process ran on; and only once its in-process step's
    thread ended by itself (Python cannot stop a thread; a second Ctrl-C did not help)."""
    import signal
    import time

    import psutil

    marker = tmp_path / "sleeper.pid"
    run = subprocess.Popen(
        [*PLANFLOW, "run", "sleepy", "-p", f"marker={marker}"],
        env=dict(cli_env, COLUMNS="200"),
        cwd=user_project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        thread_marker = Path(f"{marker}.thread")
        while not (marker.exists() and marker.read_text() and thread_marker.exists()):
            assert run.poll() is None, run.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the isolated step never started"
            time.sleep(0.2)
        child = int(marker.read_text())
        interrupted = time.monotonic()
        run.send_signal(signal.SIGINT)
        code = run.wait(timeout=60)
        took = time.monotonic() - interrupted
    finally:
        if run.poll() is None:
            run.kill()
    output = run.stdout.read()
    assert code == 130 and took < 20, f"exit {code} {took:.1f} s after SIGINT:\n{output[-3000:]}"
    # said, with where the run's log is (a failed run's line says so; an interrupted one said nothing),
    # and the progress line's last state is not the step "running" when it stopped
    assert "pipeline 'sleepy' was interrupted (Ctrl-C): its flow run is Crashed. Its log: " in output, output[-3000:]
    assert "/flow-run/" in output.split("pipeline 'sleepy' was interrupted")[1], output[-3000:]
    # the step's process, killed by planflow, is not said to be the OOM killer's work
    assert "was stopped: the run was interrupted" in output and "OOM killer" not in output, output[-3000:]
    assert "thread(s) of this process still running" in output and "leaving them" in output, output[-3000:]
    # the in-process step's task run, left in its thread, is Crashed, not Running under the Crashed run for good
    flow_run_id = re.search(rf"/flow-run/({UUID})", output.split("pipeline 'sleepy' was interrupted")[1]).group(1)
    task_runs = httpx.post(
        f"{cli_env['PREFECT_API_URL']}/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [flow_run_id]}}},
        timeout=10,
    ).json()
    napper = [t for t in task_runs if t["name"].startswith("napper")]
    assert napper and napper[0]["state"]["type"] == "CRASHED", [(t["name"], t["state"]["type"]) for t in task_runs]
    assert "which Python cannot stop" in napper[0]["state"]["message"]
    bar = [line for line in output.splitlines() if line.startswith("sleepy ")]
    assert bar and bar[-1].rstrip().endswith("interrupted"), output[-3000:]
    gone = time.monotonic() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < gone, f"the step's process {child} outlived the interrupted run"
        time.sleep(0.2)


def test_a_component_that_fits_no_pool_is_refused_before_a_flow_run_exists(user_project, cli_env):
    """`planflow plan` refused it, `planflow run` made a flow run that failed on it (and
    the retry automation ran it again, to fail the same way)."""
    out = planflow_in(user_project, "run", "too-big", env=cli_env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "pipeline 'too-big' cannot be placed:" in out.stderr and "step 'crunch' needs cpu=64" in out.stderr
    planned = planflow_in(user_project, "plan", "too-big", env=cli_env)  # the same refusal, the same code (was 1)
    assert planned.returncode == 2 and "step 'crunch' needs cpu=64" in planned.stderr, planned.stderr[-2000:]
    assert "no flow run was made" in out.stderr and "Traceback" not in out.stderr
    runs = httpx.post(
        f"{cli_env['PREFECT_API_URL']}/flow_runs/filter", json={"flows": {"name": {"any_": ["too-big"]}}}, timeout=10
    )
    assert runs.status_code == 200 and runs.json() == [], runs.text


def test_params_are_converted_to_the_declared_types(user_project, cli_env):
    out = planflow_in(
        user_project, "run", "good", "-p", "n=3", "-p", "scale=2", "-p", "fast=yes", "--json", env=cli_env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["params"] == {"n": 3, "scale": 2.0, "fast": True}
    assert result["steps"]["total"]["state"] == "Completed"


def test_a_model_parameter_round_trips_through_the_fix_and_json_and_a_failed_run_is_json_too(user_project, cli_env):
    """A pydantic-model parameter: a bad value's fix is JSON that works as written (it was
    the model's str(), refused the same way), `--json` writes the model as an object (it
    was its str()), and a run that fails still prints a JSON document (it printed nothing)."""
    bad = planflow_in(user_project, "run", "configured", "-p", "cfg={c: abc}", env=cli_env)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    fix = bad.stderr.split("Fix: e.g. --param ")[1].strip()
    assert fix == """'cfg={"c": 1.0, "max_iter": 200, "fail": false}'""", bad.stderr
    ran = planflow_in(user_project, "run", "configured", "-p", shlex.split(fix)[0], "--json", env=cli_env)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert json.loads(ran.stdout)["params"]["cfg"] == {"c": 1.0, "max_iter": 200, "fail": False}
    failed = planflow_in(user_project, "run", "configured", "-p", 'cfg={"fail": true}', "--json", env=cli_env)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    document = json.loads(failed.stdout)
    assert document["pipeline"] == "configured" and document["state"] == "Failed", document
    assert "told to fail" in document["error"] and document["flow_run_id"] in document["log_url"], document
    assert ".." not in failed.stderr, failed.stderr


def test_blocks_apply_dry_run_changes_nothing_and_a_bad_document_is_named(cli_env, tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'blocks-project'\n")
    (tmp_path / "blocks").mkdir()
    pools = tmp_path / "blocks" / "pools.yaml"
    pools.write_text("type: planflow-resource-pool\nname: cli-dry-run\nwork_pool: cli-dry-run\ncpu: 2\nmem_gib: 4\n")
    out = planflow_in(tmp_path, "blocks", "apply", "--dry-run", env=cli_env)  # the project's blocks/
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "planflow-resource-pool/cli-dry-run: would be created"
    listed = planflow_in(tmp_path, "pools", "ls", env=cli_env)
    assert listed.returncode == 0 and "cli-dry-run" not in listed.stdout

    pools.write_text(pools.read_text().replace("cpu: 2", "cpus: 2"))
    bad = planflow_in(tmp_path, "blocks", "apply", str(tmp_path / "blocks"), env=cli_env)
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"error: {tmp_path / 'blocks'}: ") and "nothing was applied" in bad.stderr
    assert "unknown field 'cpus'. Did you mean 'cpu'?" in bad.stderr and "Traceback" not in bad.stderr
