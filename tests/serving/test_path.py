"""OnlinePath: validation names every problem with its fix; YAML and Python agree."""

from __future__ import annotations

import pytest

from planflow import OnlinePath, OnlinePathError
from planflow.serving.path import find_online_path

from tests.serving.conftest import ROOT
from tests.serving.toy import Reading, make, predict


def test_a_valid_path_knows_its_request_schema_and_loaded_steps():
    path = make("serving-toy-path")
    assert path.record_type is Reading
    assert path.loaded_steps == ("scale",)
    assert path.run([Reading(x=1.5)], {"scale": 2.0}) == [3.0]


def test_every_problem_is_named_with_its_fix():
    pipeline = make("serving-toy-bad").pipeline

    def untyped(request, model: float) -> list[float]:  # request not annotated
        return []

    with pytest.raises(OnlinePathError) as info:
        OnlinePath(pipeline, steps={"a": untyped, "missing_step": None}, load={"model": "nope"}, max_batch=0)
    text = str(info.value)
    assert "max_batch=0" in text
    assert "'model' comes from step 'nope', which pipeline 'serving-toy-bad' does not have" in text
    assert "parameter 'request' is annotated" in text and "list[Record]" in text
    assert "step 'missing_step': no function" in text


def test_a_parameter_from_nowhere_is_named():
    pipeline = make("serving-toy-orphan").pipeline
    with pytest.raises(OnlinePathError, match=r"parameter 'scale' is neither the request .* Fix: add it to load"):
        OnlinePath(pipeline, steps={"predict": predict})


def test_fraud_risk_online_path_in_yaml_is_the_python_one():
    python = find_online_path("fraud-risk")
    from_yaml = OnlinePath.from_yaml(ROOT / "flows" / "fraud_risk" / "online.yaml", python.pipeline)
    assert [s.name for s in from_yaml.steps] == [s.name for s in python.steps] == ["features", "scores", "decisions"]
    assert [s.fn for s in from_yaml.steps] == [s.fn for s in python.steps]
    assert from_yaml.load == python.load == {"risk_model": "risk_model", "policy": "decisions"}


def test_a_bad_yaml_names_the_key(tmp_path):
    spec = tmp_path / "online.yaml"
    spec.write_text("pipeline: fraud-risk\nsteps: {scores: x:y}\nlaod: {}\n")
    with pytest.raises(OnlinePathError, match=r"laod: Extra inputs are not permitted"):
        OnlinePath.from_yaml(spec)


def test_a_malformed_online_path_shows_the_form_not_a_file_of_this_repository():
    with pytest.raises(OnlinePathError) as caught:
        OnlinePath.from_dict({"pipeline": "x", "steps": {}, "max_batch": 0}, source="online.yaml")
    message = str(caught.value)
    assert "max_batch: Input should be greater than or equal to 1 (got 0)" in message and "steps:" in message
    assert "Fix: write it in this form:\n  pipeline: my-pipeline" in message
    assert "fraud" not in message  # it pointed at pipelines/fraud-risk.online.yaml, which a project does not have


def test_a_yaml_online_path_names_every_problem_at_once():
    """A `max_batch: 0` hid a step's typo: the form's errors raised before the steps were
    looked at. Now the form, the imports and the wiring are all named in one error."""
    pipeline = find_online_path("fraud-risk").pipeline
    document = {
        "pipeline": "fraud-risk",
        "steps": {"features": None, "scores": "flows.fraud_risk.steps:score_rowz"},
        "max_batch": 0,
    }
    with pytest.raises(OnlinePathError) as caught:
        OnlinePath.from_dict(document, source="online.yaml", pipeline=pipeline)
    message = str(caught.value)
    assert "max_batch: Input should be greater than or equal to 1 (got 0)" in message
    assert "steps.scores:" in message and "score_rowz" in message, message
    assert len(caught.value.problems) == 2

    document = {"pipeline": "fraud-risk", "steps": {"featurez": None}, "load": {"model": "risk_modle"}, "max_batch": 0}
    with pytest.raises(OnlinePathError) as caught:
        OnlinePath.from_dict(document, source="online.yaml", pipeline=pipeline)
    problems = caught.value.problems
    assert problems[0].startswith("max_batch:")
    assert any("'risk_modle', which pipeline 'fraud-risk' does not have" in p for p in problems), problems
    assert any(p.startswith("step 'featurez': no function") for p in problems), problems
