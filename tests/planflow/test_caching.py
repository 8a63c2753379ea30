"""Caching across runs, end to end against the session's server: flow runs in this
process, and one `planflow run --json` as a user runs it.

The pipeline is written into a folder of the test's own in two versions, the second
with one component's code changed.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from planflow import Pipeline, component, to_flow
from planflow.core.component import ComponentSpecError

PLANFLOW = str(Path(sys.executable).with_name("planflow"))
PROJECT = """
from dataclasses import dataclass

import polars as pl
from planflow import Pipeline, component, to_flow

@component(cache="inputs", cache_expiry="1h", est_seconds=5)
def rows(n: int = 50, seed: int = {seed}) -> pl.DataFrame:
    return pl.DataFrame({{"x": [(i * 7 + seed) % 11 for i in range(n)]}})

@component(cache="inputs", est_seconds=5)
def features(rows: pl.DataFrame) -> pl.DataFrame:
    return rows.with_columns((pl.col("x") * {factor}).alias("y"))

@dataclass
class Total:
    value: float

    def key_metrics(self) -> dict[str, float]:
        return {{"total": self.value}}

@component(est_seconds=5)
def total(features: pl.DataFrame) -> Total:
    return Total(float(features["y"].sum()))

pipeline = Pipeline("cached-toy", [rows, features, total])
"""


def states(result: dict) -> dict[str, str]:
    return {name: step["state"] for name, step in result["steps"].items()}


@pytest.mark.server
def test_a_second_run_skips_cached_steps_and_a_change_recomputes_them(registered_blocks, cli_env, tmp_path):
    seed = uuid.uuid4().int % 10_000  # no earlier session's results match
    for version, factor in (("v1", 2), ("v2", 3)):  # v2 changes the code of `features` only
        (tmp_path / f"cached_toy_{version}.py").write_text(PROJECT.format(seed=seed, factor=factor))
    sys.path.insert(0, str(tmp_path))
    try:
        v1 = to_flow(importlib.import_module("cached_toy_v1").pipeline)
        v2 = to_flow(importlib.import_module("cached_toy_v2").pipeline)
        first = v1()
        assert states(first) == {"rows": "Completed", "features": "Completed", "total": "Completed"}

        env = {**cli_env, "PLANFLOW_PIPELINES": "cached_toy_v1:pipeline", "PYTHONPATH": str(tmp_path)}
        out = subprocess.run(
            [PLANFLOW, "run", "cached-toy", "--json"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        second = json.loads(out.stdout)
        assert states(second) == {"rows": "Cached", "features": "Cached", "total": "Completed"}
        assert second["plan"]["makespan_s"] < first["plan"]["makespan_s"] - 9  # both cached steps planned ~0 s
        assert second["steps"]["total"]["metrics"] == first["steps"]["total"]["metrics"]

        changed = v1(n=60)  # a changed parameter: its step and what it feeds compute
        assert states(changed) == {"rows": "Completed", "features": "Completed", "total": "Completed"}
        edited = v2(n=60)  # changed code: that step computes, its cached input is read back
        assert states(edited) == {"rows": "Cached", "features": "Completed", "total": "Completed"}
        assert edited["steps"]["total"]["metrics"] != changed["steps"]["total"]["metrics"]
        refreshed = v2(n=60, refresh=True)
        assert states(refreshed) == {"rows": "Completed", "features": "Completed", "total": "Completed"}
    finally:
        sys.path.remove(str(tmp_path))


@component(cache="inputs", est_seconds=1)
def fitted(seed: int = 0) -> object:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    xs = [[(i * 7 + seed) % 11, (i * 3) % 5] for i in range(60)]
    ys = [int(x[0] > 5) for x in xs]
    # a model whose pickle, fresh and read back, differs (LogisticRegression's too)
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(xs, ys)
    return {"forest": forest, "linear": LogisticRegression().fit(xs, ys)}


@component(cache="inputs", est_seconds=1)
def scored(fitted: object) -> float:
    return float(fitted["forest"].predict([[7, 1]])[0] + fitted["linear"].predict([[2, 1]])[0])


@pytest.mark.server
def test_the_step_after_a_cached_model_is_cached_too(registered_blocks):
    """The step fed by a model read back from the cache finds its own cached result: its
    key is the model's content, not its pickle (a fresh and a read-back model pickle
    differently, so it missed once before)."""
    seed = uuid.uuid4().int % 10_000
    flow = to_flow(Pipeline("cached-model", [fitted, scored], params={"seed": seed}))
    assert states(flow(seed=seed)) == {"fitted": "Completed", "scored": "Completed"}
    assert states(flow(seed=seed)) == {"fitted": "Cached", "scored": "Cached"}


def test_pipeline_wide_cache_default_and_bad_cache_values_are_named():
    @component(cache="run")
    def kept(n: int = 1) -> int:
        return n

    @component
    def defaulted(kept: int) -> int:
        return kept

    pipeline = Pipeline("cache-default", [kept, defaulted], cache="inputs")
    assert {name: step.component.cache_mode for name, step in pipeline.steps.items()} == {
        "kept": "run",
        "defaulted": "inputs",
    }
    with pytest.raises(ComponentSpecError) as bad:
        component(lambda n: n, cache="forever", cache_expiry="soon")
    assert "cache='forever': must be 'inputs'" in str(bad.value)
    assert "cache_expiry='soon': must be a duration > 0" in str(bad.value)


def test_content_digest_stands_for_content_not_for_a_pickle():
    import cloudpickle
    import numpy as np
    import polars as pl
    from prefect.utilities.hashing import hash_objects

    from planflow.core.caching import content_digest, inputs_policy

    def key(value: object) -> str:
        return hash_objects(content_digest(value), raise_on_failure=True)

    model = fitted.fn(seed=3)
    assert key(model) == key(cloudpickle.loads(cloudpickle.dumps(model)))  # differed before: the pickle's memo
    assert key(model) != key(fitted.fn(seed=4))
    frame = pl.DataFrame({"x": list(range(1000))})
    assert key(frame) == key(pl.concat([frame[:500], frame[500:]], rechunk=False))  # another memory layout
    array = np.arange(12.0).reshape(3, 4)
    assert key(array) == key(np.asfortranarray(array)) and key(array) != key(array.T)
    assert key({"a": {"x", "y", "z"}}) == key({"a": {"z", "y", "x"}})
    loop: list = [1]
    loop.append(loop)  # a cycle ends
    shared = [array] * 3
    assert key({"loop": loop, "shared": shared}) == key({"loop": loop, "shared": [array, array.copy(), array]})
    # what pickle saves, as pickle asks for it: a deque's items, a logger by its name, bytes whole
    import collections
    import logging

    assert key(collections.deque([1, 2])) != key(collections.deque([9]))  # its items are its reduce's 4th part
    assert key(b",") != key(b";") and key(bytearray(b"a")) != key(bytearray(b"b"))  # an interned byte was a "cycle"
    assert key({"log": logging.getLogger("planflow.test")}) == key({"log": logging.getLogger("planflow.test")})
    # Prefect's `ContentInputs() + TASK_SOURCE` folds ContentInputs into a plain Inputs: not used
    assert type(inputs_policy()).__name__ == "ContentAndSource"
