"""Pipeline: wiring by name, validation messages, YAML, totals."""

from __future__ import annotations

import pytest
import toy_dags  # tests/fixtures is on sys.path (see conftest / pytest pythonpath)

from planflow.core.component import component
from planflow.core.pipeline import Pipeline, PipelineError, Step

from tests.conftest import TESTS


def test_wiring_by_parameter_name():
    p = toy_dags.diamond
    assert p.upstream("report") == ("total", "scaled")
    assert p.upstream("numbers") == ()
    assert p.params == {"n": 4, "factor": 2.0}
    assert p.topological_order() == ["numbers", "total", "scaled", "report"]
    assert p.downstream("numbers") == ("total", "scaled")
    kwargs = p.step_kwargs("report", p.params, {"total": 6, "scaled": [0.0]})
    assert kwargs == {"total": 6, "scaled": [0.0]}


def test_totals_are_the_servicegrid_summary():
    t = toy_dags.diamond.totals()
    assert t["components"] == 4
    assert t["total_seconds"] == pytest.approx(0.8)
    assert t["critical_path_seconds"] == pytest.approx(0.6)  # numbers -> total|scaled -> report
    assert t["cpu_seconds"] == pytest.approx(0.8)
    assert t["mem_gib_seconds"] == pytest.approx(0.2)


def test_cycle_prints_its_path():
    with pytest.raises(PipelineError) as caught:
        Pipeline(
            "loop",
            [
                Step("numbers", toy_dags.numbers, after=("report",)),
                toy_dags.total,
                toy_dags.scaled,
                toy_dags.report,
            ],
        )
    assert "cycle: numbers -> total -> report -> numbers" in str(caught.value)
    assert "Fix: remove one of these dependencies" in str(caught.value)


def test_self_dependency_is_a_cycle():
    with pytest.raises(PipelineError, match="cycle: numbers -> numbers"):
        Pipeline("self", [Step("numbers", toy_dags.numbers, after=("numbers",))])


def test_unknown_dependency_suggests_the_closest_name():
    with pytest.raises(PipelineError) as caught:
        Pipeline(
            "typo",
            [
                toy_dags.numbers,
                toy_dags.total,
                Step("report", toy_dags.report, inputs={"scaled": "totl"}, after=("numbrs",)),
            ],
        )
    message = str(caught.value)
    assert "step 'report' after names unknown step 'numbrs'. Did you mean 'numbers'?" in message
    assert "step 'report' inputs.scaled names unknown step 'totl'. Did you mean 'total'?" in message
    # never the step itself: `after: [totl]` on step `total` was asked "Did you mean 'total'?"
    with pytest.raises(PipelineError) as caught:
        Pipeline("typo-self", [toy_dags.numbers, Step("total", toy_dags.total, after=("totl",))])
    assert "step 'total' after names unknown step 'totl'. Known steps" in str(caught.value), caught.value


def test_duplicate_step_name():
    with pytest.raises(PipelineError, match="duplicate step name 'numbers'"):
        Pipeline("dup", [toy_dags.numbers, toy_dags.numbers])


def test_parameter_without_source_names_the_fix():
    with pytest.raises(PipelineError) as caught:
        Pipeline("orphan", [toy_dags.total])
    assert (
        "step 'total' parameter 'numbers' has no source: no step is named 'numbers', the "
        "pipeline has no parameter 'numbers'"
    ) in str(caught.value)
    assert "Fix: map it with inputs={'numbers': '<step>'}" in str(caught.value)


def test_conflicting_defaults_must_be_settled_by_the_pipeline():
    @component(est_seconds=1)
    def one(seed: int = 1) -> int:
        return seed

    @component(est_seconds=1)
    def two(one: int, seed: int = 2) -> int:
        return one + seed

    with pytest.raises(PipelineError, match="parameter 'seed' defaults to 1 in step 'one' but to 2"):
        Pipeline("seeds", [one, two])
    assert Pipeline("seeds", [one, two], params={"seed": 5}).params == {"seed": 5}


def test_unused_pipeline_parameter_is_reported():
    with pytest.raises(PipelineError, match="pipeline parameter 'nn' is not used by any step. Did you mean 'n'?"):
        Pipeline("unused", [toy_dags.numbers], params={"nn": 3})


def test_a_bad_parameter_value_is_listed_beside_an_unused_parameter():
    """Both at once: the value's problem waited until the unused parameter was removed."""
    with pytest.raises(PipelineError) as caught:
        Pipeline("both", [toy_dags.numbers], params={"n": "abc", "nosuch": 3})
    message = str(caught.value)
    assert "pipeline parameter 'nosuch' is not used by any step" in message, message
    assert "params.n = 'abc': step 'numbers' takes n: int" in message, message


def test_resolve_params_converts_cli_strings_and_rejects_unknown():
    p = toy_dags.diamond
    assert p.resolve_params({"n": "7", "factor": "0.5"}) == {"n": 7, "factor": 0.5}
    with pytest.raises(PipelineError, match="unknown parameter 'm'"):
        p.resolve_params({"m": "1"})
    with pytest.raises(PipelineError, match="parameter 'n'='many' is not a int"):
        p.resolve_params({"n": "many"})


def test_yaml_pipeline_loads_with_inputs_params_and_resources():
    p = Pipeline.from_yaml(TESTS / "fixtures" / "diamond.yaml")
    assert p.name == "toy-yaml"
    assert p.params == {"n": 5}
    assert p.upstream("report") == ("total", "doubled")
    assert p.steps["doubled"].spec.cpu == 0.5 and p.steps["doubled"].spec.est_seconds == 1
    assert p.steps["doubled"].component.name == "doubled"
    assert p.step_kwargs("doubled", p.params, {"numbers": [1]}) == {"numbers": [1], "factor": 3.0}


def test_yaml_cycle_is_rejected_with_its_path():
    with pytest.raises(PipelineError, match="cycle: numbers -> total -> report -> numbers"):
        Pipeline.from_yaml(TESTS / "fixtures" / "cyclic.yaml")


def _refused(path, text: str) -> str:
    """The PipelineError's message for the pipeline file `text` written at `path`."""
    path.write_text(text)
    with pytest.raises(PipelineError) as caught:
        Pipeline.from_yaml(path)
    return str(caught.value)


def test_yaml_unknown_fields_and_bad_imports_are_all_listed(tmp_path):
    message = _refused(
        tmp_path / "bad.yaml",
        "name: bad\nschedule: daily\nsteps:\n"
        "  - name: numbers\n    uses: toy_dags:numbrs\n"
        "  - name: total\n    uses: toy_dags:total\n    afer: [numbers]\n"
        "  - name: x\n    uses: no_such_module:thing\n"
        "  - name: y\n    uses: toy_dags:numbers\n    resources: {cpu: -2}\n",
    )
    assert "the pipeline: unknown field 'schedule'" in message
    assert "step 2 ('total'): unknown field 'afer'. Did you mean 'after'?" in message
    assert "module 'toy_dags' has no 'numbrs'. Did you mean 'numbers'?" in message
    assert "cannot import module 'no_such_module'" in message
    assert "cpu=-2: must be a number > 0" in message


def test_yaml_that_is_not_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("steps: [unclosed\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        Pipeline.from_yaml(path)


def test_topological_order_keeps_declaration_order_where_the_graph_allows():
    p = Pipeline("declared", [toy_dags.numbers, toy_dags.scaled, toy_dags.total, toy_dags.report])
    assert p.topological_order() == ["numbers", "scaled", "total", "report"]
    late = Pipeline("late", [toy_dags.report, toy_dags.total, toy_dags.scaled, toy_dags.numbers])
    assert late.topological_order() == ["numbers", "total", "scaled", "report"]


def test_cycle_path_starts_at_the_step_declared_first():
    with pytest.raises(PipelineError) as caught:
        Pipeline(
            "loop",
            [toy_dags.report, toy_dags.scaled, toy_dags.total, Step("numbers", toy_dags.numbers, after=("report",))],
        )
    message = str(caught.value)
    assert message.count("cycle:") == 1
    assert "cycle: report -> numbers -> " in message and message.split("cycle: ")[1].split(".")[0].endswith("report")


def test_cycle_is_reported_beside_the_other_problems():
    with pytest.raises(PipelineError) as caught:
        Pipeline("loop", [Step("numbers", toy_dags.numbers, after=("numbers", "nmbers"))])
    message = str(caught.value)
    assert "cycle: numbers -> numbers" in message
    # not "Did you mean 'numbers'?": the step itself, a cycle again
    assert "after names unknown step 'nmbers'. Known steps: numbers" in message


def test_yaml_depends_on_points_to_after_with_the_value(tmp_path):
    path = tmp_path / "deps.yaml"
    path.write_text(
        "name: deps\nsteps:\n  - uses: toy_dags:numbers\n  - uses: toy_dags:total\n    depends_on: [numbers]\n"
    )
    with pytest.raises(PipelineError) as caught:
        Pipeline.from_yaml(path)
    message = str(caught.value)
    assert f"{path}: pipeline 'deps' is invalid:" in message
    assert (
        "step 2 ('total'): unknown field 'depends_on'. Did you mean 'after'? planflow lists the steps "
        "a step waits for under `after:`. Fix: write `after: ['numbers']`."
    ) in message


def test_yaml_required_parameters_have_no_default_and_a_default_beside_one_is_refused(tmp_path):
    """A YAML pipeline could not declare a parameter every run must be given (a data path):
    `required:` is the YAML form of Python's `params={"n": REQUIRED}`."""
    from planflow import REQUIRED

    needs = tmp_path / "needs.yaml"
    needs.write_text("name: needs\nrequired: n\nsteps:\n  - uses: toy_dags:numbers\n  - uses: toy_dags:total\n")
    pipeline = Pipeline.from_yaml(needs)
    assert pipeline.params == {"n": REQUIRED}
    with pytest.raises(PipelineError, match="parameter 'n' is required: this pipeline has no default for it"):
        pipeline.resolve_params({})
    assert pipeline.resolve_params({"n": 3}) == {"n": 3}
    both = tmp_path / "both.yaml"
    both.write_text("name: both\nparams: {n: 3}\nrequired: [n]\nsteps:\n  - uses: toy_dags:numbers\n")
    with pytest.raises(PipelineError) as caught:
        Pipeline.from_yaml(both)
    assert str(caught.value).splitlines()[1] == (
        "  - the pipeline: `required:` names 'n', which `params:` gives a default (n: 3); a required parameter "
        "has none. Fix: remove it from `params:` (every run must give it) or from `required:` (the default stands)"
    )
    unused = tmp_path / "unused.yaml"
    unused.write_text("name: unused\nrequired: [size]\nsteps:\n  - uses: toy_dags:numbers\n")
    with pytest.raises(PipelineError, match="pipeline parameter 'size' is not used by any step"):
        Pipeline.from_yaml(unused)


def test_values_a_pipeline_gives_itself_are_checked_as_a_runs_are(tmp_path):
    """`params: {rows: lots}` or a step's `params: {rows: -5}` (rows in scales_with) were
    planned, then failed inside a flow run (or showed a traceback in `planflow pipelines`);
    the same values as `--param` were refused before any run."""
    sized = component(cpu=1, mem_gib=0.25, est_seconds=0.2, scales_with={"n": 4})(toy_dags.numbers.fn)
    cases = {
        "params: {n: lots}\nsteps:\n  - uses: toy_dags:numbers\n": (
            "  - params.n = 'lots': step 'numbers' takes n: int (Input should be a valid integer, unable to parse "
            "string as an integer). Fix: a value of that type in the pipeline's params, e.g. n: 4 (the function's "
            "default)"
        ),
        "steps:\n  - uses: toy_dags:numbers\n    params: {n: 'four'}\n": (
            "  - step 'numbers' params.n = 'four': step 'numbers' takes n: int (Input should be a valid integer, "
            "unable to parse string as an integer). Fix: a value of that type in step 'numbers''s params, e.g. n: 4 "
            "(the function's default)"
        ),
    }
    for body, said in cases.items():
        written = tmp_path / "given.yaml"
        written.write_text("name: given\n" + body)
        with pytest.raises(PipelineError) as caught:
            Pipeline.from_yaml(written)
        assert said in str(caught.value).splitlines(), str(caught.value)
    for pipeline in (
        lambda: Pipeline("negative", [sized], params={"n": -5}),
        lambda: Pipeline("negative", [Step("numbers", sized, params={"n": -5})]),
    ):
        with pytest.raises(
            PipelineError, match=r"n = -5: step 'numbers' scales its estimate with n \(scales_with\), so"
        ):
            pipeline()
    assert Pipeline("fine", [sized], params={"n": 0}).params == {"n": 0}
    # what ran before is not refused: None where `n: int = 4` (wire()'s own fix for two defaults), a text that
    # reads as a number, a number for another type
    for given in ({"n": None}, {"n": "5"}, {"n": 5.0}):
        assert Pipeline("fine", [sized], params=given).params == given


def test_yaml_wrong_types_name_the_field_the_value_and_an_example(tmp_path):
    path = tmp_path / "types.yaml"
    path.write_text(
        "name: types\nretries: -1\nparams: [n]\nsteps:\n"
        "  - uses: toy_dags:numbers\n    after: [3]\n"
        "  - name: total\n"
        "  - just a string\n"
        "  - uses: toy_dags:total\n    inputs: {numbers: 4}\n    parameters: {seed: 1}\n"
    )
    with pytest.raises(PipelineError) as caught:
        Pipeline.from_yaml(path)
    lines = str(caught.value).splitlines()[1:]
    assert lines == [
        "  - the pipeline: `params:` is ['n'], but it must be a mapping of parameter names to values. "
        "Fix: e.g. `params: {seed: 7}`",
        "  - the pipeline: `retries:` is -1, but it must be a whole number >= 0. Fix: e.g. `retries: 2`",
        "  - step 1 ('numbers'): `after[0]` is 3, but `after:` must be a step name or a list of step names. "
        "Fix: e.g. `after: [features]`",
        "  - step 2 ('total'): `uses:` is missing; it must be the import path of a component or function. "
        "Fix: e.g. `uses: 'flows.fraud_risk.flow:features'`",
        "  - step 3 must be a mapping of name, uses, after, inputs, params, resources, got 'just a string'. "
        "Fix: e.g. `uses: 'flows.fraud_risk.flow:features'`",
        "  - step 4 ('total'): `inputs.numbers` is 4, but `inputs:` must be a mapping of parameter name -> "
        "upstream step name. Fix: e.g. `inputs: {rows: transactions}`",
        "  - step 4 ('total'): unknown field 'parameters'. Did you mean 'params'? Fix: write `params: {'seed': 1}`. "
        "Allowed fields: name, uses, after, inputs, params, resources",
    ]


def test_yaml_step_with_bad_fields_still_reports_its_import(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("steps:\n  - uses: toy_dags:numbrs\n    memory: 2\n    schedule: daily\n")
    with pytest.raises(PipelineError) as caught:
        Pipeline.from_yaml(path)
    message = str(caught.value)
    assert "step 1 ('numbrs'): unknown field 'memory': a step's resources go under `resources:`. " in message
    assert "Fix: write `resources: {mem_gib: 2}`." in message
    assert "step 1 ('numbrs'): unknown field 'schedule' (value 'daily'). Fix: remove it." in message
    assert "step 1 ('numbrs'): module 'toy_dags' has no 'numbrs'. Did you mean 'numbers'?" in message


def test_yaml_component_options_beside_a_steps_fields_and_a_field_typed_twice(tmp_path):
    """A step's `cache: run` was told "Fix: remove it" (it goes under `resources:`), and a
    pipeline's `stepz:` beside its `steps:` was told to write `steps:` (given already)."""
    message = _refused(
        tmp_path / "both.yaml",
        "steps:\n  - uses: toy_dags:numbers\n    cache: run\n    retries: 2\nstepz:\n  - uses: toy_dags:total\n",
    )
    assert "step 1 ('numbers'): unknown field 'cache': a step's resources go under `resources:`. " in message
    assert "Fix: write `resources: {cache: 'run'}`." in message and "Fix: write `resources: {retries: 2}`." in message
    assert "unknown field 'stepz'. Did you mean 'steps'? `steps:` is given already. Fix: remove `stepz:`" in message


def test_yaml_empty_fields_take_their_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("name: empty\ndescription:\nparams:\nsteps:\n  - uses: toy_dags:numbers\n    after:\n")
    p = Pipeline.from_yaml(path)
    assert p.description == "" and p.params == {"n": 4} and p.upstream("numbers") == ()


def test_yaml_lists_field_resource_import_and_wiring_mistakes_in_one_pass(tmp_path):
    """A file with a bad field, a bad `resources:` on that same step, a bad import and a
    wiring mistake among the steps that built: one listing (it took three rounds of fixes),
    and no problem that only a step which did not build explains (its inputs are known)."""
    message = _refused(
        tmp_path / "many.yaml",
        "name: many\nparams: {n: 3}\nsteps:\n"
        "  - name: numbers\n    uses: toy_dags:numbers\n"
        "  - name: total\n    uses: toy_dags:total\n    depends_on: [numbers]\n"
        "    resources: {memory: 2, cpu: -1}\n"
        "  - name: scaled\n    uses: toy_dags:scaledd\n"
        "  - name: report\n    uses: toy_dags:report\n    inputs: {total: totl}\n",
    )
    assert "step 2 ('total'): unknown field 'depends_on'" in message
    assert "step 2 ('total'): its `resources:` on 'toy_dags:total': component 'total'" in message
    assert "unknown key 'memory'. Did you mean 'mem_gib'?" in message and "cpu=-1: must be a number > 0" in message
    assert "step 3 ('scaled'): module 'toy_dags' has no 'scaledd'" in message
    assert "step 'report' inputs.total names unknown step 'totl'. Did you mean 'total'?" in message
    assert "has no source" not in message, message  # report's `scaled` input: that step did not build


def test_yaml_resources_set_a_components_task_options(tmp_path):
    """retries, timeout_seconds and tags are allowed under `resources:` (the error lists
    them): they apply to the step's task. They raised a bare TypeError from the spec."""
    path = tmp_path / "opts.yaml"
    path.write_text(
        "name: opts\nsteps:\n  - name: numbers\n    uses: toy_dags:numbers\n"
        "    resources: {retries: 2, retry_delay_seconds: 1, timeout_seconds: 5, tags: [nightly], cpu: 0.5}\n"
    )
    step = Pipeline.from_yaml(path).steps["numbers"]
    assert (step.component.retries, step.component.timeout_seconds) == (2, 5.0)
    assert step.component.tags == {"nightly", "planflow"} and step.spec.cpu == 0.5


def test_yaml_resources_task_options_are_checked_like_the_decorators(tmp_path):
    """tags as a string became one tag per letter; tags: null raised a bare TypeError."""
    message = _refused(
        tmp_path / "tags.yaml",
        "name: tags\nsteps:\n  - name: numbers\n    uses: toy_dags:numbers\n    resources: {tags: nightly}\n"
        "  - name: total\n    uses: toy_dags:total\n    resources: {tags: null, retries: -1}\n",
    )
    assert "tags='nightly': must be a list of strings. Fix: e.g. tags=['nightly']" in message
    assert "tags=None: must be a list of strings" in message and "retries=-1: must be a number >= 0" in message


def test_a_nan_or_infinite_param_is_refused_with_why_since_the_flow_run_would_get_null():
    from planflow.cli.params import ParamError, typed_values

    assert typed_values(toy_dags.diamond, {"factor": "0.5"}) == {"factor": 0.5}
    for text in ("nan", "inf", "-.inf"):
        with pytest.raises(ParamError) as caught:
            typed_values(toy_dags.diamond, {"factor": text})
        assert str(caught.value) == (
            f"--param factor={text}: parameter 'factor' of pipeline 'toy-diamond' takes a float, got {text!r} "
            "(a flow run's parameters travel as JSON, which has no nan or infinity: the run would get null). "
            "Fix: e.g. --param factor=2.0"
        )


def test_a_yes_or_no_is_refused_where_a_number_is_expected_as_prefect_refuses_it():
    """YAML reads yes/no/on/off/true as booleans, which pydantic's lax mode took for 1 and 0:
    `--param factor=off` ran with factor 0.0 (a failure deep in the step), while Prefect
    refuses `-p factor=true` for a deployment run."""
    from planflow.cli.params import ParamError, typed_values

    for text in ("yes", "off", "true"):
        with pytest.raises(ParamError) as caught:
            typed_values(toy_dags.diamond, {"factor": text})
        assert f"takes a float, got {text!r}" in str(caught.value), caught.value
        with pytest.raises(ParamError):
            typed_values(toy_dags.diamond, {"n": text})
    assert typed_values(toy_dags.diamond, {"factor": "3", "n": "4"}) == {"factor": 3.0, "n": 4}


def _limited(limit: int | None = None) -> int:
    return limit or 0


def _int_with_none_default(limit: int = None) -> int:  # noqa: RUF013 (as users write it)
    return limit or 0


def test_an_optional_param_is_set_back_to_none_in_pythons_spelling_or_yamls():
    """`--param limit=None` was refused for an `int | None` parameter, with `e.g. --param
    limit=None` as the fix (and "a Optional[int]")."""
    from planflow import Pipeline, component
    from planflow.cli.params import ParamError, typed_values

    pipeline = Pipeline("optional-param", [component(_limited, cpu=1, est_seconds=1)])
    for text in ("None", "none", "null", "~", ""):
        assert typed_values(pipeline, {"limit": text}) == {"limit": None}, text
    assert typed_values(pipeline, {"limit": "7"}) == {"limit": 7}
    with pytest.raises(ParamError) as caught:
        typed_values(pipeline, {"limit": "many"})
    message = str(caught.value)
    assert "takes an int | None, got 'many'" in message, message
    assert "Fix: e.g. --param limit=null" in message, message
    with pytest.raises(ParamError):  # a parameter that does not take None still refuses it
        typed_values(toy_dags.diamond, {"factor": "None"})
    plain = Pipeline("none-default", [component(_int_with_none_default, cpu=1, est_seconds=1)])
    with pytest.raises(ParamError) as caught:  # `int = None` takes no None: null is not its example
        typed_values(plain, {"limit": "many"})
    assert str(caught.value).endswith("Fix: e.g. --param limit=..."), caught.value


def test_a_yaml_cycle_among_the_steps_that_built_is_listed_beside_the_other_problems(tmp_path):
    """A cycle between two steps that did build was reported only once the other problems
    (here a step whose `uses:` does not import) were fixed: one more round of edits."""
    message = _refused(
        tmp_path / "cycle-and-more.yaml",
        "name: cyc\nsteps:\n"
        "  - name: numbers\n    uses: toy_dags:numbrs\n"
        "  - name: total\n    uses: toy_dags:total\n    after: [report]\n"
        "  - name: report\n    uses: toy_dags:report\n    after: [total]\n",
    )
    assert "module 'toy_dags' has no 'numbrs'" in message, message
    assert "cycle: total -> report -> total" in message or "cycle: report -> total -> report" in message, message


def _load_rows(path: str) -> int:
    return len(path)


@pytest.mark.usefixtures("registered_blocks")
def test_a_required_parameter_has_no_default_in_the_flow_and_a_run_without_it_is_refused_before_it_starts():
    """A parameter every run must be given (a data path): one with no default was refused
    ("has no source"), and `params={"path": None}` made it optional in the deployment's
    schema, so a run without it failed inside. REQUIRED makes it a required flow parameter."""
    from prefect.utilities.callables import parameter_schema

    from planflow import REQUIRED, to_flow
    from planflow.cli.params import ParamError, typed_values
    from planflow.core.component import component

    pipeline = Pipeline("needs-a-path", [component(_load_rows, cpu=0.1, est_seconds=1)], params={"path": REQUIRED})
    assert repr(pipeline.params["path"]) == "REQUIRED"
    with pytest.raises(PipelineError, match="parameter 'path' is required: this pipeline has no default for it"):
        pipeline.resolve_params({})
    assert pipeline.resolve_params({"path": "s3://x"}) == {"path": "s3://x"}
    with pytest.raises(ParamError, match=r"--param: parameter 'path' is required.*--param path=\.\.\."):
        typed_values(pipeline, {})
    assert typed_values(pipeline, {"path": "data.csv"}) == {"path": "data.csv"}
    schema = parameter_schema(to_flow(pipeline).fn)
    assert "path" in schema.required and schema.properties["path"]["type"] == "string", schema
    assert "default" not in schema.properties["path"]
    ran = to_flow(pipeline)(path="abc")  # a run given it
    assert ran["params"] == {"path": "abc"} and ran["steps"]["_load_rows"]["state"] == "Completed", ran
    # called without it from Python: named with the pipeline and the fix, before a run exists
    # (Prefect's "Error binding parameters for function 'run': missing a required argument")
    with pytest.raises(PipelineError) as refused:
        to_flow(pipeline)()
    assert str(refused.value) == (
        "pipeline 'needs-a-path' needs 'path' (declared REQUIRED: no default), which this call does not give. "
        "Fix: give it, e.g. needs_a_path(path=...)"
    )
    import pickle

    assert pickle.loads(pickle.dumps(REQUIRED)) is REQUIRED
