"""A user's project works from its own folder: which folder is the project, settings
from the environment, pipelines found from any subfolder (a YAML pipeline naming the
project's own module included), and no state left by a command that starts no server."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from planflow.core import discovery
from planflow.settings import SettingsError, StatePaths, project_root, settings

from tests.e2e.userproject import PIPELINE, YAML_PIPELINE, clean_env, write_project

PLANFLOW = Path(sys.executable).with_name("planflow")


def planflow(*args: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(PLANFLOW), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def folders(base: Path, *names: str) -> None:
    for name in names:
        (base / name).mkdir(parents=True, exist_ok=True)


# -- the project root ------------------------------------------------------------------------
def test_the_state_folder_wins_over_nearer_markers(tmp_path):
    folders(tmp_path, "p/.planflow", "p/sub/deeper")
    (tmp_path / "p" / "sub" / "pyproject.toml").write_text("")
    assert project_root(tmp_path / "p" / "sub" / "deeper") == tmp_path / "p"


@pytest.mark.parametrize("marker", ["prefect.yaml", "pyproject.toml", "flows/"])
def test_a_prefect_project_is_found_by_its_markers(tmp_path, marker):
    folders(tmp_path, "p/a/b")
    if marker.endswith("/"):
        folders(tmp_path / "p", marker)
    else:
        (tmp_path / "p" / marker).write_text("")
    assert project_root(tmp_path / "p" / "a" / "b") == tmp_path / "p"


def test_without_markers_the_project_is_where_you_stand(tmp_path):
    folders(tmp_path, "plain/x")
    assert project_root(tmp_path / "plain" / "x") == tmp_path / "plain" / "x"


def test_a_state_folder_in_the_home_folder_captures_no_project_below_it(tmp_path, monkeypatch):
    home = tmp_path / "home"
    folders(home, ".planflow", "p/src")
    (home / "p" / "prefect.yaml").write_text("")
    monkeypatch.setenv("HOME", str(home))
    assert project_root(home / "p" / "src") == home / "p"
    assert project_root(home) == home  # standing in the home folder itself, it counts


# -- settings --------------------------------------------------------------------------------
def test_settings_come_from_planflow_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANFLOW_PIPELINES", "team.flows:pipeline, extra.yaml,")
    monkeypatch.setenv("PLANFLOW_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # the XDG spec: only absolute paths
    monkeypatch.setenv("HOME", str(tmp_path))
    current = settings()
    assert current.pipelines == ("team.flows:pipeline", "extra.yaml")
    assert StatePaths.discover().home == tmp_path / "state"
    assert current.user_state_dir() == tmp_path / ".local" / "state" / "planflow"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert settings().user_state_dir() == tmp_path / "xdg" / "planflow"


def test_settings_are_made_once_per_environment_and_again_when_a_variable_they_read_changes(monkeypatch):
    monkeypatch.setenv("PLANFLOW_SLOT_POLL_SECONDS", "0.5")
    first = settings()
    assert settings() is first  # nothing they read changed: the same object
    monkeypatch.setenv("UNRELATED_VARIABLE", "x")
    assert settings() is first
    monkeypatch.setenv("planflow_slot_poll_seconds", "0.75")  # read case-insensitively, as PlanflowSettings does
    monkeypatch.delenv("PLANFLOW_SLOT_POLL_SECONDS")
    assert settings().slot_poll_seconds == 0.75
    monkeypatch.setenv("PLANFLOW_SLOT_POLL_SECONDS", "bad")
    monkeypatch.delenv("planflow_slot_poll_seconds")
    with pytest.raises(SettingsError):  # a bad value is named every time, never served from before
        settings()
    with pytest.raises(SettingsError):
        settings()
    monkeypatch.setenv("PLANFLOW_SLOT_POLL_SECONDS", "0.5")
    assert settings().slot_poll_seconds == 0.5
    with pytest.raises(ValidationError):  # one object for every caller: nobody may change it
        settings().slot_poll_seconds = 1.0  # type: ignore[misc]


def test_bad_settings_are_named_with_their_values(monkeypatch):
    monkeypatch.setenv("PLANFLOW_PICKUP_TIMEOUT_SECONDS", "soon")
    monkeypatch.setenv("PLANFLOW_CRASH_AFTER_SECONDS", "-5")
    with pytest.raises(SettingsError) as caught:
        settings()
    assert "PLANFLOW_PICKUP_TIMEOUT_SECONDS='soon': Input should be a valid number" in str(caught.value)
    assert "PLANFLOW_CRASH_AFTER_SECONDS='-5': Input should be greater than 0" in str(caught.value)
    assert str(caught.value).endswith("Fix: correct or unset them.")


# -- the command line in a user's project ------------------------------------------------------
@pytest.fixture
def project(tmp_path) -> Path:
    return write_project(tmp_path / "project")


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """No PLANFLOW_* or PREFECT_* of this session: the project's own state is found."""
    return clean_env(PLANFLOW.parent, tmp_path / "home", XDG_STATE_HOME=str(tmp_path / "xdg"))


def test_commands_that_start_no_server_leave_no_state(project, env):
    subfolder = project / "flows" / "wordcount"
    commands = (
        (["--help"], project),
        (["pipelines"], subfolder),
        (["env"], subfolder),
        (["server", "status"], project),
        (["worker", "start", "--help"], project),
        (["pools", "set", "big", "--cpu", "-2", "--mem-gib", "1"], project),  # refused before any server
        (["demo"], project),  # a project without planflow's demo-failure: refused before any server
    )
    # all at once: each is mostly Python importing Prefect, and CI has two cores
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        runs = list(pool.map(lambda command: planflow(*command[0], cwd=command[1], env=env), commands))
    for done in runs:
        assert "Failed to create the Prefect home" not in done.stderr, done.stderr
    assert not list(project.rglob(".planflow"))
    bad_pool, demo = runs[-2:]
    assert demo.returncode == 2 and "runs the pipeline 'demo-failure'" in demo.stderr, demo.stderr
    assert "Fix: `planflow demo --no-monitoring`" in demo.stderr
    assert bad_pool.returncode == 2, bad_pool.stderr
    assert "pool 'big': --cpu -2.0: Input should be greater than 0. Fix: e.g. --cpu 2" in bad_pool.stderr
    assert "pydantic" not in bad_pool.stderr


def test_pipelines_are_found_from_a_subfolder_yaml_ones_naming_the_projects_module_too(project, env):
    listed = planflow("pipelines", cwd=project / "flows" / "wordcount", env=env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert PIPELINE in listed.stdout and YAML_PIPELINE in listed.stdout
    assert "flows.wordcount.flow" in listed.stdout and "wordcount-short.yaml" in listed.stdout
    assert "hello" not in listed.stdout + listed.stderr  # a plain Prefect flow: not a pipeline, not an error
    described = planflow("pipelines", YAML_PIPELINE, cwd=project / "pipelines", env=env)
    assert described.returncode == 0 and "lines" in described.stdout and "words" in described.stdout


def test_a_yaml_pipeline_of_the_project_runs_from_a_subfolder(project, env, prefect_server):
    # The session's server, chosen the way a user chooses a server: PREFECT_API_URL.
    env = dict(env, PREFECT_API_URL=prefect_server.url)
    done = planflow("run", YAML_PIPELINE, "--json", cwd=project / "flows", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert list(result["steps"]) == ["lines", "words"] and result["params"]["rows"] == 10
    run = httpx.get(f"{prefect_server.url}/flow_runs/{result['flow_run_id']}", timeout=10).json()
    assert run["state_type"] == "COMPLETED" and "pipeline:wordcount-short" in run["tags"]


def test_a_flows_package_imported_from_elsewhere_is_named_not_confused(project, monkeypatch):
    import flows  # this repository's examples, as pytest's pythonpath has them

    monkeypatch.setattr(sys, "path", list(sys.path))  # discovery adds the project: undo it after
    monkeypatch.chdir(project)
    found = {item.source: item for item in discovery.discover()}
    error = found["flows.wordcount.flow"].error or ""
    assert f"the module 'flows' is already imported from {Path(flows.__file__).parent}" in error
    assert f"not from this project's {project / 'flows'}" in error


def test_an_unknown_name_shows_each_failed_sources_whole_error(monkeypatch):
    """A component's problems follow a first line ending in a colon: the unknown-name
    message shows them (it cut the error at its first line), and a long one is cut short
    with where to read the rest."""
    first = "ComponentSpecError: component 'step_a' (flows.bad.flow.step_a) has 1 problem:"
    spec_error = first + "\n  - cpu=-1: must be a number > 0"
    long_error = "\n".join(f"line {i}" for i in range(20))
    monkeypatch.setattr(
        discovery,
        "discover",
        lambda: [
            discovery.Found("churn", "flows.churn.flow", pipeline=object()),
            discovery.Found("bad", "flows.bad.flow", error=spec_error),
            discovery.Found("long", "flows.long.flow", error=long_error),
        ],
    )
    with pytest.raises(discovery.UnknownPipelineError) as caught:
        discovery.get("chrun")
    message = str(caught.value)
    assert "Did you mean 'churn'?" in message
    assert f"  - flows.bad.flow: {first}\n" in message
    assert "\n        - cpu=-1: must be a number > 0" in message
    assert (
        f"line {discovery.ERROR_LINES_SHOWN - 1}\n" in message
        and f"line {discovery.ERROR_LINES_SHOWN}\n" not in message
    )
    assert f"... ({20 - discovery.ERROR_LINES_SHOWN} more lines: `planflow pipelines`)" in message


BROKEN_MODULE = """
from planflow import component


@component(cpu=-1)
def step_a(x: int) -> int:
    return x


@component(cpus=2)
def step_b(x: int) -> int:
    return x


@component(cpu=1)
def step_c(x, *rest):
    return x


step_d = component(step_b, name="renamed", mem_gib="lots")
LIMIT = 2


@component(cpu=LIMIT, cpus=1)  # not a literal: left to the declaration
def step_e(x: int) -> int:
    return x
"""


def test_a_module_stopped_at_one_component_also_names_its_others_problems(tmp_path, monkeypatch):
    """The first broken component stops the module; the others' problems come from its source."""
    (tmp_path / "pf_broken_components.py").write_text(BROKEN_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # discovery adds the project: undo it after
    monkeypatch.setenv("PLANFLOW_PIPELINES", "pf_broken_components")
    [found] = [item for item in discovery.discover() if item.source == "pf_broken_components"]
    assert found.pipeline is None
    first = found.error.splitlines()[0]
    assert first == "ComponentSpecError: component 'step_a' (pf_broken_components.step_a) has 1 problem:"
    rest = found.error.split("Also in this module (checked from its source):\n", 1)[1]
    assert rest.startswith("component 'step_b' (line 10) has 1 problem:\n  - unknown key 'cpus'. Did you mean 'cpu'?")
    assert "component 'step_c' (line 15) has 3 problems:\n  - parameter 'x' has no type annotation." in rest
    assert "  - parameter 'rest' is *args/**kwargs" in rest
    assert "  - the return value has no type annotation. Fix: add `-> <type>`" in rest
    assert "component 'renamed' (line 20) has 1 problem:\n  - mem_gib='lots'" in rest
    assert "step_e" not in rest and "step_a" not in rest
