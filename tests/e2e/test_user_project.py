"""planflow in a user's own Prefect project, installed from its wheel (issue 11, the
first "Done when"): built, installed into a fresh virtual environment, and used from
the project's folder exactly as the README says, with nothing of this repository on
any path.

One module-scoped set-up: the wheel (built from a copy of the source, so no stale
`build/` of the checkout leaks in), a virtual environment in a temporary folder with
`planflow[workers]` installed from it under constraints.txt, a user's project beside
it (tests/e2e/userproject.py), and a HOME of its own. Every command runs with a clean
environment (no PYTHONPATH, no PLANFLOW_* or PREFECT_* of this session) and its cwd in
the project. Test instrumentation: each Python process of that environment records
any file it opens or lists under the repository (an audit hook loaded by a .pth
file); every command, and finally the whole run, must have recorded none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from planflow.ops.processes import stop_process
from planflow.ops.server import free_port

from tests.e2e.userproject import (
    DEPLOYMENT,
    PIPELINE,
    YAML_DEPLOYMENT,
    YAML_PIPELINE,
    clean_env,
    final_flow_run,
    flow_run,
    tail,
    write_project,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", ".planflow", "*.egg-info", "__pycache__", ".pytest_cache"
)
AUDIT_MODULE = '''\
"""Test instrumentation of tests/e2e: record every file opened or listed under the
repository by any Python process of this environment."""
import os
import sys

_REPO = {repo!r}
_LOG = {log!r}
_EVENTS = {{"open", "os.listdir", "os.scandir", "os.chdir"}}


def _hook(event, args):
    if event not in _EVENTS or not args:
        return
    path = args[0]
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(path, str) and (path == _REPO or path.startswith(_REPO + os.sep)):
        line = f"{{os.getpid()}} {{event}} {{path}} argv={{sys.argv[:3]}}\\n"
        descriptor = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(descriptor, line.encode())
        os.close(descriptor)


sys.addaudithook(_hook)
'''


@dataclass
class UserProject:
    """The installed environment and the user's project, and how to run commands there."""

    venv: Path
    project: Path
    home: Path
    audit_log: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(self.bin, self.home, **extra)

    def repository_reads(self) -> list[str]:
        return self.audit_log.read_text().splitlines() if self.audit_log.exists() else []

    def run(self, *command: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run `command` in the project (or `cwd`); it must read nothing of the repository."""
        before = len(self.repository_reads())
        done = subprocess.run(
            command, cwd=cwd or self.project, env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        reads = self.repository_reads()[before:]
        assert not reads, f"{' '.join(command)} read the repository:\n" + "\n".join(reads[:20])
        return done

    def planflow(self, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.run(str(self.bin / "planflow"), *args, cwd=cwd, timeout=timeout)

    def shell(self, script: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """A shell line as the README writes it, e.g. `eval "$(planflow env)" && prefect ...`."""
        return self.run("bash", "-c", script, timeout=timeout)

    def server_log(self) -> str:
        return tail(self.project / ".planflow" / "server.log")


def show(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"


# -- set-up ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source") / "planflow"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, show(built)
    (found,) = out.glob("planflow-*.whl")
    return found


@pytest.fixture(scope="module")
def user_project(wheel, tmp_path_factory) -> UserProject:
    root = tmp_path_factory.mktemp("user")
    venv = root / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, show(made)
    constraints = root / "constraints.txt"
    shutil.copy(REPO / "constraints.txt", constraints)
    # pip keeps the caller's HOME (its configuration and warm cache); nothing else of it.
    # --no-compile: Python compiles what the commands import when they import it; pip
    # would compile every module of every dependency first (measured: 73 s of CPU
    # instead of 39 s for the whole install).
    # The README's install: urllib3-future built from source with URLLIB3_NO_OVERRIDE.
    pip_env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANFLOW_", "PREFECT_", "PYTHONPATH"))}
    pip_env["URLLIB3_NO_OVERRIDE"] = "1"
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]
        + ["--no-binary", "urllib3-future", "-c", str(constraints), f"planflow[workers] @ {wheel.as_uri()}"],
        env=pip_env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert installed.returncode == 0, show(installed)
    audit_log = root / "repository-reads.log"
    (site_packages,) = (venv / "lib").glob("python3.*/site-packages")
    (site_packages / "planflow_e2e_audit.py").write_text(AUDIT_MODULE.format(repo=str(REPO), log=str(audit_log)))
    (site_packages / "planflow_e2e_audit.pth").write_text("import planflow_e2e_audit\n")
    return UserProject(venv, write_project(root / "project"), root / "home", audit_log)


@pytest.fixture(scope="module")
def server(user_project) -> str:
    """`planflow server up --port N` in the project; at the end `planflow stack down`."""
    port = free_port()
    up = user_project.planflow("server", "up", "--port", str(port), timeout=300)
    assert up.returncode == 0, show(up) + user_project.server_log()
    url = f"http://127.0.0.1:{port}/api"
    assert url in up.stdout
    yield url
    down = user_project.planflow("stack", "down", timeout=180)
    assert down.returncode == 0, show(down)
    assert not httpx_ok(url)


def httpx_ok(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def deployed(user_project, server) -> dict:
    """planflow's work pools applied, then the project's prefect.yaml deployed with
    Prefect's own command, in the environment `planflow env` prints."""
    pools = user_project.planflow("workpools", "apply")
    assert pools.returncode == 0, show(pools)
    assert "local-process (process)" in pools.stdout
    deploy = user_project.shell('eval "$(planflow env)" && prefect --no-prompt deploy --all')
    assert deploy.returncode == 0, show(deploy)
    response = httpx.get(f"{server}/deployments/name/{PIPELINE}/{DEPLOYMENT}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# -- the tests, in the order a user goes ---------------------------------------------------
def test_the_wheel_holds_planflow_only(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"planflow", re.sub(r"\.whl$", "", wheel.name).rsplit("-", 3)[0] + ".dist-info"}, top
    assert not [n for n in names if n.startswith(("flows/", "tests/", "pipelines/", "bench/"))]
    # Package data: the job templates and monitoring configuration travel inside.
    assert any(n.startswith("planflow/prefect/job_templates/") and n.endswith(".json") for n in names)
    assert any(n.startswith("planflow/monitoring/config/") and n.endswith(".yml") for n in names)
    assert "planflow/monitoring/RUNBOOK.md" in names  # what `planflow runbook` prints


def test_planflow_is_the_installed_one_and_commands_leave_no_state(user_project):
    code = "import sys, planflow as p, prefect as q; print(p.__file__, q.__file__, 'planflow_e2e_audit' in sys.modules)"
    where = user_project.run(str(user_project.bin / "python"), "-c", code)
    assert where.returncode == 0, show(where)
    *files, audited = where.stdout.split()
    assert all(Path(file).is_relative_to(user_project.venv) for file in files), where.stdout
    assert audited == "True", "the audit hook is not loaded: the repository-reads checks would prove nothing"
    for args in (["--help"], ["env"], ["server", "status"]):
        user_project.planflow(*args)
    assert not (user_project.project / ".planflow").exists(), "a command that starts no server left state behind"


def test_pipelines_are_found_from_a_subfolder_of_the_project(user_project):
    listed = user_project.planflow("pipelines", cwd=user_project.project / "flows" / "wordcount")
    assert listed.returncode == 0, show(listed)
    assert PIPELINE in listed.stdout and YAML_PIPELINE in listed.stdout
    assert "hello" not in listed.stdout + listed.stderr  # a plain Prefect flow, left alone
    assert not list(user_project.project.rglob(".planflow"))


def test_run_completes_tagged_planflow(user_project, server):
    for name, rows in ((PIPELINE, 20), (YAML_PIPELINE, 5)):
        done = user_project.planflow("run", name, "--json", "--param", f"rows={rows}")
        assert done.returncode == 0, show(done) + user_project.server_log()
        result = json.loads(done.stdout)
        assert result["params"]["rows"] == rows
        run = flow_run(server, result["flow_run_id"])
        assert run["state_type"] == "COMPLETED"
        assert {"planflow", f"pipeline:{name}"} <= set(run["tags"]), run["tags"]
    # promoted for `planflow serve --tag release`, as the README's Serving section says
    promoted = user_project.planflow("promote", result["flow_run_id"])
    assert promoted.returncode == 0 and "tags now" in promoted.stdout, show(promoted)
    assert "release" in flow_run(server, result["flow_run_id"])["tags"]


def test_the_deployment_form_is_typed(deployed):
    schema = deployed["parameter_openapi_schema"]["properties"]
    assert schema["rows"]["type"] == "integer" and schema["rows"]["default"] == 100
    assert schema["top"]["type"] == "integer"
    assert schema["policy"]["enum"] == ["plan", "fifo"]
    assert schema["mode"]["enum"] == ["inprocess", "distributed", "dask"]


def test_a_worker_started_as_the_readme_says_runs_the_deployment(user_project, server, deployed, tmp_path):
    run_deployment = f'eval "$(planflow env)" && prefect deployment run {PIPELINE}/{DEPLOYMENT}'
    rejected = user_project.shell(f"{run_deployment} -p rows=lots")
    assert rejected.returncode != 0, show(rejected)
    started = user_project.shell(f"{run_deployment} -p rows=50")
    assert started.returncode == 0, show(started)
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)
    # the pipeline declared in YAML, deployed through the README's module (flows/wordcount_short.py)
    yaml_run = f'eval "$(planflow env)" && prefect deployment run {YAML_PIPELINE}/{YAML_DEPLOYMENT} -p rows=7'
    started_yaml = user_project.shell(yaml_run)
    assert started_yaml.returncode == 0, show(started_yaml)
    yaml_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started_yaml.stdout).group(1)
    # each component a flow run of its own: their processes import the pipeline by its project
    # path, not by the name Prefect gave the entrypoint's module ("No module named 'flow'")
    started_distributed = user_project.shell(f"{run_deployment} -p rows=20 -p mode=distributed")
    assert started_distributed.returncode == 0, show(started_distributed)
    distributed_id = re.search(r"UUID: ([0-9a-f-]{36})", started_distributed.stdout).group(1)

    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [str(user_project.bin / "planflow"), "worker", "start", "local-process"],
            cwd=user_project.project,
            env=user_project.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        run = final_flow_run(server, run_id, 300, lambda: tail(log) + "\n" + user_project.server_log())
        yaml_done = final_flow_run(server, yaml_run_id, 300, lambda: tail(log) + "\n" + user_project.server_log())
        distributed = final_flow_run(server, distributed_id, 600, lambda: tail(log) + "\n" + user_project.server_log())
    finally:
        stop_process(worker, timeout=30)  # its process group: the worker and its flow runs
    assert run["state_type"] == "COMPLETED", tail(log)
    assert run["parameters"]["rows"] == 50
    assert {"planflow", f"pipeline:{PIPELINE}"} <= set(run["tags"]), run["tags"]
    assert yaml_done["state_type"] == "COMPLETED" and yaml_done["parameters"]["rows"] == 7, tail(log)
    assert {"planflow", f"pipeline:{YAML_PIPELINE}"} <= set(yaml_done["tags"]), yaml_done["tags"]
    assert "worker for pool 'local-process' (process)" in log.read_text()
    assert distributed["state_type"] == "COMPLETED", tail(log)


def test_stack_and_automations_from_the_project(user_project, server):
    port = server.removesuffix("/api").rsplit(":", 1)[1]
    services = ("prometheus", "pushgateway", "alertmanager", "bridge", "exporter")
    ports = [f"--{name}-port={free_port()}" for name in services]
    up = user_project.planflow("stack", "up", "--profile", "fast", f"--prefect-port={port}", *ports, timeout=300)
    monitoring = user_project.project / ".planflow" / "monitoring"
    assert up.returncode == 0, show(up) + "\n".join(tail(p) for p in sorted(monitoring.glob("*.log")))
    applied = user_project.planflow("automations", "apply")
    assert applied.returncode == 0, show(applied)
    assert "planflow: retry failed or crashed runs" in applied.stdout
    status = user_project.planflow("stack", "status")
    assert status.returncode == 0, show(status)
    # every alert's `runbook` annotation names this command; the project has no RUNBOOK.md
    runbook = user_project.planflow("runbook", "PlanflowBridgeDown")
    assert runbook.returncode == 0 and runbook.stdout.startswith("## PlanflowBridgeDown\n"), show(runbook)
    assert "**What to do**" in runbook.stdout and "## PlanflowBridgeSpoolBacklog" not in runbook.stdout
    down = user_project.planflow("stack", "down", "--no-server")
    assert down.returncode == 0, show(down)
    after = user_project.planflow("stack", "status")
    assert after.returncode == 3 and re.search(r"^prefect\s+running", after.stdout, re.M), show(after)


def test_nothing_read_the_repository(user_project, server):
    """Last: also what background processes (server, worker, services) did."""
    assert not user_project.repository_reads(), "\n".join(user_project.repository_reads()[:40])
