"""A user's own Prefect project, written into a folder, and the clean environment its
commands run in: what the end-to-end test and the project tests work with.

The project, as a team would lay it out:

    prefect.yaml                  its own deployments (a process-pool one of wordcount)
    flows/__init__.py
    flows/wordcount/__init__.py
    flows/wordcount/text.py       a helper module of the project (imported by flow.py)
    flows/wordcount/flow.py       3 components, `pipeline`, and its flow `wordcount`
    flows/hello/flow.py           a plain Prefect flow, no planflow (must be left alone)
    pipelines/wordcount-short.yaml  a YAML pipeline whose `uses:` names the project's module
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from planflow.ops.waiting import wait_for

PIPELINE = "wordcount"
YAML_PIPELINE = "wordcount-short"
DEPLOYMENT = "wordcount-process"
YAML_DEPLOYMENT = "wordcount-short-process"

TEXT = '''\
"""Plain helpers of the project (no framework import)."""


def tokens(line: str) -> list[str]:
    return line.lower().split()
'''

FLOW = '''\
"""A user's pipeline: lines -> words -> counts."""

from planflow import Pipeline, component, to_flow

from flows.wordcount.text import tokens


@component(cpu=1, mem_gib=0.25, est_seconds=1)
def lines(rows: int = 100) -> list[str]:
    return [f"Line {i} of the user's text" for i in range(rows)]


@component(cpu=1, mem_gib=0.25, est_seconds=1)
def words(lines: list[str]) -> list[str]:
    return [word for line in lines for word in tokens(line)]


@component(cpu=1, mem_gib=0.25, est_seconds=1)
def counts(words: list[str], top: int = 3) -> dict[str, int]:
    totals: dict[str, int] = {}
    for word in words:
        totals[word] = totals.get(word, 0) + 1
    return dict(sorted(totals.items(), key=lambda item: -item[1])[:top])


pipeline = Pipeline("wordcount", [lines, words, counts], description="Count the words of generated lines")
wordcount = to_flow(pipeline)
'''

PLAIN_FLOW = '''\
"""A plain Prefect flow of the same project: planflow must leave it alone."""

from prefect import flow


@flow
def hello() -> str:
    return "hello"
'''

YAML = """\
name: wordcount-short
description: The first two steps of wordcount, on a few rows
params:
  rows: 10
steps:
  - name: lines
    uses: flows.wordcount.flow:lines
  - name: words
    uses: flows.wordcount.flow:words
"""

# The README's module for deploying a pipeline declared in YAML (a deployment's entrypoint)
YAML_FLOW = """\
# flows/wordcount_short.py: the flow of pipelines/wordcount-short.yaml, for prefect.yaml
from pathlib import Path

from planflow import Pipeline, to_flow

wordcount_short = to_flow(Pipeline.from_yaml(Path(__file__).parents[1] / "pipelines" / "wordcount-short.yaml"))
"""

PREFECT_YAML = """\
# The project's own deployments (Prefect's format; nothing planflow-specific).
name: wordcount-project
prefect-version: 3.8.8

deployments:
  - name: wordcount-process
    entrypoint: flows/wordcount/flow.py:wordcount
    description: wordcount on a process work pool
    work_pool:
      name: {pool}
  - name: wordcount-short-process
    entrypoint: flows/wordcount_short.py:wordcount_short
    work_pool:
      name: {pool}
  # the README's: each component of a `mode=distributed` run is a flow run of this one
  - name: {pool}
    entrypoint: planflow.runtime.component_flow:run_component
    work_pool:
      name: {pool}
"""


def write_project(folder: Path, pool: str = "local-process") -> Path:
    """Write the project into `folder` (created); returns it."""
    files = {
        "prefect.yaml": PREFECT_YAML.format(pool=pool),
        "flows/__init__.py": "",
        "flows/wordcount/__init__.py": "",
        "flows/wordcount/text.py": TEXT,
        "flows/wordcount/flow.py": FLOW,
        "flows/hello/__init__.py": "",
        "flows/hello/flow.py": PLAIN_FLOW,
        "pipelines/wordcount-short.yaml": YAML,
        "flows/wordcount_short.py": YAML_FLOW,
    }
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def clean_env(bin_dir: Path, home: Path, **extra: str) -> dict[str, str]:
    """An environment with nothing of the caller's: no PYTHONPATH, no PLANFLOW_* or
    PREFECT_* variables, `bin_dir` first on PATH, HOME in a folder of the test's."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.pathsep.join([str(bin_dir), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "COLUMNS": "200",  # rich tables: whole names, not ellipses
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }
    env.update(extra)
    return env


def flow_run(api_url: str, run_id: str) -> dict[str, Any]:
    response = httpx.get(f"{api_url}/flow_runs/{run_id}", timeout=10)
    response.raise_for_status()
    return response.json()


def final_flow_run(api_url: str, run_id: str, timeout: float, logs: Callable[[], str]) -> dict[str, Any]:
    """The flow run once it reached a final state; on timeout the error holds `logs()`."""

    def finished() -> dict[str, Any] | None:
        run = flow_run(api_url, run_id)
        return run if run["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None

    try:
        return wait_for(finished, timeout, f"flow run {run_id} to finish", error=AssertionError)
    except AssertionError as exc:
        state = flow_run(api_url, run_id)
        raise AssertionError(f"{exc}; its state: {state['state_type']} {state['state_name']}\n{logs()}") from None


def tail(path: Path, lines: int = 60) -> str:
    try:
        return f"--- {path} (last {lines} lines)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"--- {path}: (none)"
