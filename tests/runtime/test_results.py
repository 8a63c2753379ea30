"""Typed, compact results (the planflow serializer) and their retention (`results gc`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.serializers import Serializer
from prefect.states import Scheduled

from planflow.prefect.serializer import PlanflowSerializer, ResultFormatError
from planflow.runtime.results import BOUND_CHECK_SECONDS, BOUND_STAMP, ResultFile, ResultsBound, select

PLANFLOW = str(Path(sys.executable).with_name("planflow"))
DAY = 86400.0


@dataclass
class Model:
    weights: np.ndarray
    name: str


FRAME = pl.DataFrame({"id": range(300), "label": [f"c{i % 5}" for i in range(300)], "x": [i / 7 for i in range(300)]})


@pytest.mark.parametrize(
    "value",
    [
        FRAME,
        FRAME.to_pandas().set_index("id"),
        FRAME.to_arrow(),
        np.arange(60.0).reshape(3, 20),
        Model(np.ones(3), "m"),
    ],
    ids=["polars", "pandas", "arrow", "numpy", "object"],
)
def test_results_round_trip_to_the_same_type_in_compact_form(value):
    serializer = Serializer(type="planflow")  # registered the Prefect way: by its type name
    assert isinstance(serializer, PlanflowSerializer)
    blob = serializer.dumps(value)
    back = serializer.loads(blob)
    assert type(back) is type(value)
    if isinstance(value, pl.DataFrame):
        assert back.equals(value) and blob.startswith(b"planflow1:polars:")
    elif isinstance(value, pd.DataFrame):
        pd.testing.assert_frame_equal(back, value)
    elif isinstance(value, pa.Table):
        assert back.equals(value)
    elif isinstance(value, np.ndarray):
        assert np.array_equal(back, value) and back.dtype == value.dtype
    else:
        assert np.array_equal(back.weights, value.weights) and back.name == value.name
    assert blob.isascii()  # Prefect keeps the bytes in a JSON record


def test_a_blob_from_another_serializer_is_refused_with_the_fix():
    with pytest.raises(ResultFormatError, match="not written by planflow's serializer"):
        PlanflowSerializer().loads(b"gASVBQAAAAAAAACMAWGULg==")


def _file(name: str, age_days: float, now: float, size: int = 100) -> ResultFile:
    return ResultFile(Path(name), size, now - age_days * DAY)


def test_selection_keeps_recent_and_unfinished_runs_results():
    now, run = time.time(), str(uuid.uuid4())
    files = [
        _file("cache-a", 10, now),
        _file(f"planflow-{run}-step-1", 10, now),  # its run is not final
        _file("cache-b", 3, now),
        _file("cache-c", 0.1, now),  # within the retry window
    ]
    by_age = select(files, now=now, retry_window=DAY, unfinished={run}, older_than=7 * DAY)
    assert [f.path.name for f in by_age.deleted] == ["cache-a"] and by_age.protected == 2
    by_count = select(files, now=now, retry_window=DAY, unfinished={run}, keep_last=2)
    assert [f.path.name for f in by_count.deleted] == ["cache-a"]  # cache-b is among the 2 newest
    bounded = select(files, now=now, retry_window=DAY, unfinished={run}, max_bytes=250)
    assert [f.path.name for f in bounded.deleted] == ["cache-a", "cache-b"]  # protected ones stay over the bound


def test_a_runs_end_bounds_the_results_folder_walking_it_only_when_it_may_be_near_the_bound(tmp_path, monkeypatch):
    """Each run's end walked the whole results folder (1.7 s of CPU for 100,000 results): it
    now walks it when the last check found it over half the bound, or was a minute ago or
    more (or the clock went back past it); far under the bound, the runs in between skip."""
    monkeypatch.setenv("PLANFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("PLANFLOW_RESULTS_MAX_MIB", str(250_000 / 2**20))  # five results of 50,000 bytes fit
    monkeypatch.setenv("PLANFLOW_RESULTS_RETRY_WINDOW_SECONDS", "0")
    results = tmp_path / "results"
    (results / "nested").mkdir(parents=True)
    stamp = tmp_path / BOUND_STAMP
    age = iter(range(100, 0, -1))  # each result added is younger than the one before

    def add(*names: str) -> None:
        for name in names:
            (results / name).write_bytes(os.urandom(50_000))
            when = time.time() - next(age) * 3600
            os.utime(results / name, (when, when))

    def left() -> list[str]:
        return sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file())

    def stamp_at(seconds_ago: float) -> None:
        when = time.time() - seconds_ago
        os.utime(stamp, (when, when))

    add("nested/a", "b")
    ResultsBound().on_finished(None, None)  # under the bound: nothing to delete; 100,000 bytes noted
    assert stamp.read_text() == "100000" and stamp.stat().st_mode & 0o777 == 0o600
    add("c", "d", "e", "f")
    ResultsBound().on_finished(None, None)  # checked a moment ago, far under the bound then: not walked
    assert left() == ["b", "c", "d", "e", "f", "nested/a"]
    stamp_at(BOUND_CHECK_SECONDS + 1)
    ResultsBound().on_finished(None, None)  # a minute on: walked, the oldest (in a subfolder) deleted
    assert left() == ["b", "c", "d", "e", "f"] and stamp.read_text() == "250000"
    add("g")
    ResultsBound().on_finished(None, None)  # near the bound: every run's end checks, as before
    assert left() == ["c", "d", "e", "f", "g"]
    for name in ("c", "d", "e", "f"):
        (results / name).unlink()
    ResultsBound().on_finished(None, None)
    assert stamp.read_text() == "50000"
    add("h", "i", "j", "k", "l")
    stamp_at(-3600)  # a clock set back an hour: the stamp is in its future
    ResultsBound().on_finished(None, None)
    assert left() == ["h", "i", "j", "k", "l"]


@flow(name="planflow-gc-probe")
def probe() -> None:
    return None


@pytest.mark.server
def test_gc_frees_space_but_not_results_a_retry_may_need(prefect_server, cli_env, tmp_path):
    with get_client(sync_client=True) as client:
        waiting = client.create_flow_run(probe, state=Scheduled())  # not final: a run may still read its results
    try:
        results = tmp_path / "results"
        results.mkdir()
        old = time.time() - 10 * DAY
        names = {
            "old-cache": "0123abcd",
            "old-finished": f"planflow-{uuid.uuid4()}-features-1a2b",
            "old-waiting": f"planflow-{waiting.id}-features-1a2b",
            "young": f"planflow-{uuid.uuid4()}-rows-3c4d",
        }
        for label, name in names.items():
            (results / name).write_bytes(os.urandom(50_000))
            if label != "young":
                os.utime(results / name, (old, old))
        env = {**cli_env, "PLANFLOW_HOME": str(tmp_path)}
        out = subprocess.run(
            [PLANFLOW, "results", "gc", "--older-than", "7d", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        figures = json.loads(out.stdout)
        assert figures["deleted"] == 2 and figures["freed_bytes"] == 100_000 and figures["protected"] == 2
        assert sorted(p.name for p in results.iterdir()) == sorted([names["old-waiting"], names["young"]])
        bad = subprocess.run(
            [PLANFLOW, "results", "gc", "--older-than", "soon"], env=env, capture_output=True, text=True, timeout=120
        )
        assert bad.returncode == 2 and "--older-than='soon': must be a duration > 0" in bad.stderr
    finally:
        with get_client(sync_client=True) as client:
            client.delete_flow_run(waiting.id)


def test_an_output_of_a_class_only_a_deployments_loader_can_import_is_read_by_another_process(tmp_path, monkeypatch):
    """Prefect loads a deployment's entrypoint (flows/credit/flow.py) as a module named
    `flow`, so `from . import steps` makes `flow.steps`: a model class defined there was
    pickled as `flow.steps.Model`, which `planflow serve` (another process) could not
    import ("No module named 'flow'"), and it kept serving an older run's model. Such a
    class is now pickled by value (pickle_by_value.py)."""
    import subprocess
    import sys
    import textwrap

    from prefect.utilities.importtools import load_script_as_module

    package = tmp_path / "flows" / "credit"
    package.mkdir(parents=True)
    (tmp_path / "flows" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "steps.py").write_text(
        textwrap.dedent(
            """
            class Model:
                def __init__(self, k):
                    self.k = k

                def predict(self, x):
                    return x * self.k
            """
        )
    )
    (package / "flow.py").write_text("from . import steps\n\n\ndef train():\n    return steps.Model(3)\n")
    monkeypatch.chdir(tmp_path)  # a worker's run: in the project's folder
    # a single-file module on a path folder inside the project (PYTHONPATH=src) is importable by
    # its name elsewhere too: it stays pickled by reference (its folder was taken for the loader's)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "plain_helpers_of_the_test.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    __import__("plain_helpers_of_the_test")
    loaded = load_script_as_module(str(package / "flow.py"))
    from planflow.prefect.pickle_by_value import by_value_where_unimportable

    registered = by_value_where_unimportable()
    assert "plain_helpers_of_the_test" not in registered and loaded.__name__ in registered, registered
    model = loaded.train()
    assert type(model).__module__.endswith(".steps") and not type(model).__module__.startswith("flows.")
    (tmp_path / "model.bin").write_bytes(PlanflowSerializer().dumps(model))
    reader = (
        "from pathlib import Path\n"
        "from planflow.prefect.serializer import PlanflowSerializer\n"
        "model = PlanflowSerializer().loads(Path('model.bin').read_bytes())\n"
        "print(type(model).__name__, model.predict(2))\n"
    )
    read = subprocess.run([sys.executable, "-c", reader], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr[-2000:]
    assert read.stdout.split() == ["Model", "6"]


def test_a_pipeline_in_a_deployments_entrypoint_is_named_by_its_project_path_for_other_processes(tmp_path, monkeypatch):
    """Prefect loads a deployment's entrypoint file (flows/credit/flow.py) as a module named
    `flow`: a `mode=distributed` run of it named its pipeline `flow:pipeline`, and each
    component's flow run failed ("cannot import module 'flow'"). Its ref is now the module's
    place in the project's packages, which another process imports."""
    import subprocess
    import sys

    from prefect.utilities.importtools import load_script_as_module

    package = tmp_path / "flows" / "credit"
    package.mkdir(parents=True)
    (tmp_path / "flows" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "steps.py").write_text("def score(n: int = 3) -> int:\n    return n * 2\n")
    (package / "flow.py").write_text(
        "from planflow import Pipeline, component\n\nfrom . import steps\n\n"
        "pipeline = Pipeline('credit', [component(steps.score, cpu=1, est_seconds=1)])\n"
    )
    monkeypatch.chdir(tmp_path)  # a worker's run: in the project's folder
    loaded = load_script_as_module(str(package / "flow.py"))
    assert not loaded.__name__.startswith("flows."), loaded.__name__  # Prefect's own name for it
    code = "import sys; from planflow.core.discovery import load_ref; print(load_ref(sys.argv[1]).name)"
    for layout in ("packages", "folders without __init__.py (optional, as discovery has them)"):
        if layout != "packages":
            for init in (tmp_path / "flows" / "__init__.py", package / "__init__.py"):
                init.unlink()
            loaded = load_script_as_module(str(package / "flow.py"))  # under Prefect's loader's name now
        ref = loaded.pipeline.ref
        assert ref == "flows.credit.flow:pipeline", (layout, ref)
        other = subprocess.run(
            [sys.executable, "-c", code, ref],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert other.returncode == 0 and other.stdout.strip() == "credit", (layout, other.stderr[-2000:])
