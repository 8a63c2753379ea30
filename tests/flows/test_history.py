"""The duration history: a record per component and code version on the Prefect server,
parameters that scale the work, and a rewritten component starting from its declaration."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
import uuid
from pathlib import Path
from types import ModuleType

import pytest

from planflow import to_flow
from planflow.core.component import ComponentSpecError, component
from planflow.core.pipeline import Pipeline, PipelineError
from planflow.runtime import history
from planflow.runtime.planning import make_plan

V1 = """
import time
from planflow import component

@component(cpu=1, mem_gib=0.25, est_seconds=30, name="{name}")
def train(n_rows: int = 1000) -> int:
    time.sleep(0.2)  # the slow version: stands for 32 s of work
    return n_rows
"""

V2 = """
import time
from planflow import component

@component(cpu=1, mem_gib=0.25, est_seconds=2, name="{name}")
def train(n_rows: int = 1000) -> int:
    time.sleep(0.05)  # rewritten: much faster
    return n_rows * 2
"""

SCALED_ROWS = """
from planflow import component

@component(cpu=1, mem_gib=0.25, est_seconds=4, scales_with={{"n_rows": 1000}}, name="{name}")
def rows(n_rows: int = 1000) -> int:
    return n_rows
"""


def load(path: Path, source: str, name: str) -> ModuleType:
    """A module written to a file, as a user's project has it (so its source can be hashed)."""
    path.write_text(textwrap.dedent(source.format(name=name)))
    module_name = f"history_fixture_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def test_a_scaling_parameter_must_be_a_parameter_of_the_function_with_a_positive_reference():
    def rows(n_rows: int = 10) -> int:
        return n_rows

    with pytest.raises(ComponentSpecError) as error:
        component(rows, scales_with={"n_row": 100, "n_rows": 0})
    message = str(error.value)
    assert "scales_with names 'n_row', which is not a parameter of rows. Did you mean 'n_rows'?" in message
    assert "scales_with['n_rows']=0: must be a number > 0" in message
    with pytest.raises(ComponentSpecError, match="scales_with=100: must map parameter names"):
        component(rows, scales_with=100)


def test_the_declared_estimate_scales_with_the_work_parameters():
    def rows(n_rows: int = 1000) -> int:
        return n_rows

    spec = component(rows, est_seconds=4, scales_with={"n_rows": 1000}).spec
    assert spec.work_factor({"n_rows": 3000}) == 3.0
    assert spec.work_factor({}) == 1.0  # no value: the reference
    assert history.estimate(4, False, {}, "rows", "local", scale=3.0) == history.Estimate(
        12.0, "declared, x3 for its work parameters"
    )


@pytest.mark.usefixtures("registered_blocks")
def test_a_pipelines_totals_are_at_its_own_parameters_work():
    """`planflow pipelines` showed a pipeline whose parameter doubles a step's work at the
    step's declared time (a YAML pipeline with n_rows 400000: 23 s, its plan 33 s)."""
    rows = component(cpu=1, mem_gib=0.25, est_seconds=4, scales_with={"n_rows": 1000})(_rows)
    pipeline = Pipeline("scaled-totals", [rows], params={"n_rows": 2500})
    assert pipeline.totals()["critical_path_seconds"] == pytest.approx(4.0)  # as declared
    totals = pipeline.totals(history.work_scale(pipeline))
    assert totals["critical_path_seconds"] == pytest.approx(10.0) and totals["cpu_seconds"] == pytest.approx(10.0)
    assert make_plan(pipeline).plan["_rows"].duration == pytest.approx(10.0)  # what the plan says too


def _rows(n_rows: int = 1000) -> int:
    return n_rows


@pytest.mark.usefixtures("registered_blocks")  # its plan reads the pools: alone, it found no server
def test_a_negative_work_parameter_is_refused_and_zero_work_is_planned_short(tmp_path):
    """A run with n_rows=-5 was planned at the declared 4 s, as if at the reference rows;
    it is refused now, naming the step and the fix. n_rows=0 is no work (planned at the
    minimum), and a recorded run of no work is not scaled up to a run with work."""
    rows = component(cpu=1, mem_gib=0.25, est_seconds=4, scales_with={"n_rows": 1000})(_rows)
    pipeline = Pipeline("scaled-signs", [rows])
    with pytest.raises(PipelineError) as error:
        pipeline.resolve_params({"n_rows": -5})
    assert (
        "parameter 'n_rows'=-5: step '_rows' scales its estimate with it (scales_with={'n_rows': ...}), "
        "so it must be >= 0. Fix: give it e.g. n_rows=1000 (`--param` of planflow run, `-p` of prefect "
        "deployment run)" in str(error.value)
    )
    assert make_plan(pipeline, params={"n_rows": 0}).plan["_rows"].duration == pytest.approx(history.MIN_SECONDS)
    # from the command line it is a usage error, before any run is made (exit 2, as the README says)
    from planflow.cli.params import ParamError, typed_values

    with pytest.raises(ParamError, match=r"--param: parameter 'n_rows'=-5: step '_rows' scales its estimate"):
        typed_values(pipeline, {"n_rows": "-5"})
    assert typed_values(pipeline, {"n_rows": "0"}) == {"n_rows": 0}
    _refused_by_the_deployments_schema(pipeline)

    name = f"rows-{uuid.uuid4().hex[:8]}"
    recorded = load(tmp_path / "rows.py", SCALED_ROWS, name).rows
    learning = Pipeline("scaled-zero", [recorded])
    history.record(history.Observation(recorded.name, recorded.code_version, "local", 0.3, work={"n_rows": 0.0}))
    assert make_plan(learning, params={"n_rows": 2000}).plan[name].duration == pytest.approx(8.0)  # declared
    assert make_plan(learning, params={"n_rows": 0}).plan[name].duration == pytest.approx(0.3)  # learned


def _refused_by_the_deployments_schema(pipeline) -> None:
    """Through a deployment (`prefect deployment run -p n_rows=-5`, the UI's form), the
    server refuses it before a flow run exists: the flow's schema says >= 0."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.utilities.callables import parameter_schema

    from planflow import to_flow

    flow = to_flow(pipeline)
    schema = parameter_schema(flow.fn)
    assert schema.properties["n_rows"]["minimum"] == 0, schema.properties["n_rows"]
    with get_client(sync_client=True) as client:
        deployment = client.create_deployment(
            flow_id=client.create_flow(flow),
            name=f"schema-{uuid.uuid4().hex[:8]}",
            parameter_openapi_schema=schema.model_dump_for_openapi(),
            enforce_parameter_schema=True,
        )
        try:
            with pytest.raises(PrefectHTTPStatusError) as refused:
                client.create_flow_run_from_deployment(deployment, parameters={"n_rows": -5})
            assert "n_rows" in refused.value.response.text and "minimum" in refused.value.response.text.lower()
            made = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment])), limit=5
            )
            assert made == []  # no run at all, not a failed one
            allowed = client.create_flow_run_from_deployment(deployment, parameters={"n_rows": 0})
            assert allowed.parameters == {"n_rows": 0}
            client.delete_flow_run(allowed.id)
        finally:
            client.delete_deployment(deployment)


def test_history_keys_fit_prefect_and_name_the_component_and_its_code_version():
    key = history.history_key("Train Model_v2", "0123456789abcdef")
    assert key == "planflow-history-train-model-v2-0123456789abcdef"
    assert len(history.history_key("x" * 300, "0123456789abcdef")) <= history.KEY_MAX


@pytest.mark.usefixtures("registered_blocks")
def test_a_rewritten_component_is_planned_from_its_declaration_not_at_what_the_old_code_took(tmp_path):
    """Issue 12: a component rewritten from 32 s to 2 s kept being planned at 32 s."""
    name = f"train-{uuid.uuid4().hex[:8]}"
    old = load(tmp_path / "old.py", V1, name).train
    new = load(tmp_path / "new.py", V2, name).train
    assert old.name == new.name and old.code_version != new.code_version
    pipeline_old = Pipeline("rewritten", [old])
    pipeline_new = Pipeline("rewritten", [new])
    # Two runs of the old code took 32 s each (written through the path a run's
    # HistoryReporter takes, so the test need not wait 64 s).
    for _ in range(2):
        history.record(history.Observation(old.name, old.code_version, "local", 32.0, work={"n_rows": 1000.0}))
    assert make_plan(pipeline_old).plan[name].duration == pytest.approx(32.0)

    rewritten = make_plan(pipeline_new)
    assert rewritten.plan[name].duration == pytest.approx(2.0)
    assert rewritten.source_of(name) == "declared"

    # A real run of the new code is recorded and planned from from then on.
    to_flow(pipeline_new)()
    [seen] = history.observations(new, 10)
    assert seen.pool == "local" and seen.code_version == new.code_version
    assert 0.05 <= seen.seconds < 32.0, seen  # the new code's own time (orchestration included)
    learned = make_plan(pipeline_new)
    assert learned.source_of(name) == "history: median of 1 run"
    assert learned.plan[name].duration == pytest.approx(seen.seconds)
    assert make_plan(pipeline_old).plan[name].duration == pytest.approx(32.0)  # each version its own


@pytest.mark.usefixtures("registered_blocks")
def test_learned_durations_are_scaled_to_the_work_of_the_run_being_planned(tmp_path):
    name = f"rows-{uuid.uuid4().hex[:8]}"
    rows = load(tmp_path / "rows.py", SCALED_ROWS, name).rows
    pipeline = Pipeline("scaled-rows", [rows])
    declared = make_plan(pipeline, params={"n_rows": 2500})
    assert declared.plan[name].duration == pytest.approx(10.0)
    assert declared.source_of(name) == "declared, x2.5 for its work parameters"

    # measured: 3 s at 1000 rows and 12 s at 2000 rows, i.e. 3 s and 6 s per 1000 rows
    history.record(history.Observation(rows.name, rows.code_version, "local", 3.0, work={"n_rows": 1000.0}))
    history.record(history.Observation(rows.name, rows.code_version, "local", 12.0, work={"n_rows": 2000.0}))
    learned = make_plan(pipeline, params={"n_rows": 4000})
    assert learned.plan[name].duration == pytest.approx((12.0 + 24.0) / 2)  # median of 12 s and 24 s at 4000 rows
    assert learned.source_of(name) == "history: median of 2 runs"


@pytest.mark.usefixtures("registered_blocks")
def test_a_step_is_planned_from_the_runs_where_it_ran_as_it_will_now_in_a_thread_or_a_process(tmp_path):
    name = f"spin-{uuid.uuid4().hex[:8]}"
    source = """
    from planflow import component

    @component(cpu=1, mem_gib=0.25, est_seconds=4, name="{name}")
    def spin(n: int = 1) -> int:
        return n
    """
    spin = load(tmp_path / "spin.py", source, name).spin
    seen = [("thread", 9.0), ("process", 2.0), ("process", 3.0), (None, 5.0)]  # None: a record before it was kept
    for isolation, seconds in seen:
        history.record(history.Observation(spin.name, spin.code_version, "local", seconds, isolation=isolation))
    in_thread = make_plan(Pipeline("spin-thread", [spin]))
    assert in_thread.plan[name].duration == pytest.approx(7.0)  # median of 9 and 5
    in_process = make_plan(Pipeline("spin-process", [spin], isolation="process"))
    assert in_process.plan[name].duration == pytest.approx(3.0)  # median of 2, 3 and 5
    assert history.observations(spin, 10)[0].isolation is None  # newest first, read back as written
    # a distributed run (child flow runs: their start-up included) and a Dask run learn from their own
    for ran_as, seconds in (("flow-run", 30.0), ("flow-run", 40.0), ("dask", 1.0)):
        history.record(history.Observation(spin.name, spin.code_version, "local", seconds, isolation=ran_as))
    thread_pipeline = Pipeline("spin-thread", [spin])
    assert history.recent_durations(thread_pipeline, 10, mode="distributed")[(name, "local")] == [40.0, 30.0, 5.0]
    assert history.recent_durations(thread_pipeline, 10, mode="dask")[(name, "local")] == [1.0, 5.0]
    assert history.recent_durations(thread_pipeline, 10)[(name, "local")] == [5.0, 9.0]  # in a thread, as before


@pytest.mark.usefixtures("registered_blocks")
def test_a_duration_that_is_not_positive_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"history of 'x': seconds=0 must be > 0"):
        history.record(history.Observation("x", "0" * 16, "local", 0))


@pytest.mark.usefixtures("registered_blocks")
def test_a_run_told_not_to_learn_leaves_the_history_as_it_was(tmp_path, monkeypatch):
    """PLANFLOW_LEARN_DURATIONS=false (e.g. the fleet benchmark's control group, whose
    oversubscribed runs took 2-3x their time): the run completes and records nothing; the
    next run learns again."""
    name = f"train-{uuid.uuid4().hex[:8]}"
    pipeline = Pipeline("unlearned", [load(tmp_path / "v2.py", V2, name).train])
    monkeypatch.setenv("PLANFLOW_LEARN_DURATIONS", "false")
    to_flow(pipeline)()
    assert history.observations(pipeline.steps[name].component, 10) == []
    monkeypatch.delenv("PLANFLOW_LEARN_DURATIONS")
    to_flow(pipeline)()
    assert len(history.observations(pipeline.steps[name].component, 10)) == 1


@pytest.mark.usefixtures("registered_blocks")
def test_the_history_of_a_pipeline_is_read_in_one_request_then_its_next_pages_then_per_version(tmp_path, monkeypatch):
    """A plan read each component version's records with a request of its own (96 reads
    in a fleet burst of 8 runs); now one request reads them all, a full page is followed by
    the next until every version has its records or none is left, and a version still
    short after MAX_PAGES is read alone, so the answer is the same every way."""
    from prefect.client.orchestration import SyncPrefectClient

    tag = uuid.uuid4().hex[:8]
    a, b, c = (load(tmp_path / f"{x}.py", V2, f"{x}-{tag}").train for x in "abc")
    keys = {history.history_key(x.name, x.code_version): x for x in (a, b, c)}
    history.record(history.Observation(b.name, b.code_version, "local", 5.0))
    for seconds in (1.0, 2.0, 3.0):
        history.record(history.Observation(a.name, a.code_version, "local", seconds))
    requests = []
    real = SyncPrefectClient.read_artifacts

    def counted(self, *args, **kwargs):
        requests.append(kwargs["artifact_filter"].key.any_)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SyncPrefectClient, "read_artifacts", counted)
    read = history.observations_of(keys, 2)
    assert [o.seconds for o in read[history.history_key(a.name, a.code_version)]] == [3.0, 2.0]  # newest first
    assert [o.seconds for o in read[history.history_key(b.name, b.code_version)]] == [5.0]
    assert read[history.history_key(c.name, c.code_version)] == []
    assert len(requests) == 1 and sorted(requests[0]) == sorted(keys)

    requests.clear()
    monkeypatch.setattr(history, "PAGE", 2)  # a's two newest fill the page: b and c may be cut off
    assert history.observations_of(keys, 2) == read
    assert len(requests) == 2 and sorted(requests[1]) == sorted(k for k in keys if keys[k] is not a)  # then the rest

    requests.clear()
    monkeypatch.setattr(history, "MAX_PAGES", 1)  # pages run out first: b and c are read alone
    assert history.observations_of(keys, 2) == read
    assert len(requests) == 3 and len(requests[1]) == len(requests[2]) == 1
    monkeypatch.setattr(history, "MAX_PAGES", 10)

    requests.clear()  # inside read_once, what was read answers again without a request
    monkeypatch.setattr(history, "PAGE", 200)
    with history.read_once():
        history.observations_of(keys, 2)
        assert [o.seconds for o in history.observations(a, 2)] == [3.0, 2.0]
    assert len(requests) == 1


@pytest.mark.usefixtures("registered_blocks")
def test_a_component_shared_by_many_steps_is_read_from_its_newest_records_not_a_page_of_them(tmp_path, monkeypatch):
    """A run whose steps share a component records their observations in one record per
    run (400 in a run of 400 steps, 126 KB): a read of 20 observations asked for a page of
    200 such records, megabytes that a run of 400 waited for before its plan. Now the
    pages are as long as the observations still wanted need: a process that has not seen
    the version asks for one record, then sizes the next page by what it held."""
    from prefect.client.orchestration import SyncPrefectClient

    train = load(tmp_path / "shared.py", V2, f"shared-{uuid.uuid4().hex[:8]}").train
    for run in range(4):  # four runs of 30 steps sharing it
        history.record_many(
            [history.Observation(train.name, train.code_version, "local", run + 1 + i / 100) for i in range(30)]
        )
    single = history.Observation(train.name, train.code_version, "local", 9.0)
    asked = []
    real = SyncPrefectClient.read_artifacts

    def counted(self, *args, **kwargs):
        found = real(self, *args, **kwargs)
        asked.append((kwargs["limit"], len(found)))
        return found

    monkeypatch.setattr(SyncPrefectClient, "read_artifacts", counted)
    monkeypatch.setattr(history, "_per_record", {})  # a process that has not seen it (a worker's)
    read = history.observations(train, 20)
    assert asked == [(1, 1)]  # the newest record holds the 20
    assert [o.seconds for o in read] == [4 + i / 100 for i in reversed(range(10, 30))]  # the newest 20, newest first

    asked.clear()
    history.record(single)  # the newest record now holds one, the one before thirty
    monkeypatch.setattr(history, "_per_record", {})
    read = history.observations(train, 40)
    assert asked == [(1, 1), (39, 4)]  # then a page sized by the one it held: the rest, all there is
    assert [o.seconds for o in read][:2] == [9.0, 4.29] and len(read) == 40

    asked.clear()  # the same process again: it knows the newest record holds one, and asks for all it needs
    assert history.observations(train, 40) == read
    assert asked == [(40, 5)]


@pytest.mark.usefixtures("registered_blocks")
def test_a_batch_states_what_its_observations_share_once_and_reads_back_whole(tmp_path):
    """A record of 400 observations of one run repeated the component, its code version,
    the pipeline and the run 400 times (94 KB; 34 KB stated once). Read back, each
    observation has them again; a batch written before (each item whole) reads as it did,
    and a field the items do not share stays with each."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    train = load(tmp_path / "batch.py", V2, f"batch-{uuid.uuid4().hex[:8]}").train
    key, run = history.history_key(train.name, train.code_version), str(uuid.uuid4())
    made = [
        history.Observation(train.name, train.code_version, "local", 1.0 + i, None, {"n_rows": 10.0}, "fraud", run)
        for i in range(3)
    ]
    history.record_many(made[:2] + [history.Observation(**{**made[2].__dict__, "pipeline": "churn"})])
    with get_client(sync_client=True) as client:
        [stored] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
        assert {k: v for k, v in stored.data.items() if k != "observations"} == {
            "component": train.name,
            "code_version": train.code_version,
            "flow_run_id": run,
        }
        assert [item["pipeline"] for item in stored.data["observations"]] == ["fraud", "fraud", "churn"]
        assert all("component" not in item and "flow_run_id" not in item for item in stored.data["observations"])
        client.create_artifact(  # as a batch was written before: each item whole
            history.ArtifactCreate(
                key=key,
                type=history.HISTORY_TYPE,
                data={"observations": [o.to_data() for o in made[:1]] * 2},
            )
        )
    read = history.observations(train, 10)
    assert read[:2] == [made[0], made[0]]  # the older way, newest first
    assert read[2:] == [history.Observation(**{**made[2].__dict__, "pipeline": "churn"}), made[1], made[0]]


@pytest.mark.usefixtures("registered_blocks")
def test_a_read_asks_only_for_the_versions_still_short_and_grows_its_pages_when_it_guessed_short(tmp_path, monkeypatch):
    """A version with many records must not crowd out one with none (pages of one record
    each, until the pages ran out, then a read alone), and a newest record holding more
    observations than the older ones must not leave the read short."""
    from prefect.client.orchestration import SyncPrefectClient

    tag = uuid.uuid4().hex[:8]
    often, new, mixed = (load(tmp_path / f"{x}.py", V2, f"{x}-{tag}").train for x in ("often", "new", "mixed"))
    for i in range(12):
        history.record(history.Observation(often.name, often.code_version, "local", 1.0 + i))
        history.record(history.Observation(mixed.name, mixed.code_version, "local", 1.0 + i))
    history.record_many([history.Observation(mixed.name, mixed.code_version, "local", 50.0 + i) for i in range(7)])
    asked = []
    real = SyncPrefectClient.read_artifacts

    def counted(self, *args, **kwargs):
        found = real(self, *args, **kwargs)
        asked.append((len(kwargs["artifact_filter"].key.any_), kwargs["limit"], len(found)))
        return found

    monkeypatch.setattr(SyncPrefectClient, "read_artifacts", counted)
    keys = {history.history_key(c.name, c.code_version): c for c in (often, new)}
    read = history.observations_of(keys, 2)
    assert [o.seconds for o in read[history.history_key(often.name, often.code_version)]] == [12.0, 11.0]
    assert read[history.history_key(new.name, new.code_version)] == []
    assert asked == [(2, 3, 3), (1, 6, 0)]  # then the one still short, alone in the filter

    asked.clear()  # the newest record holds 7 (this process wrote it), the twelve before one each
    read = history.observations(mixed, 16)
    assert [o.seconds for o in read] == [50.0 + i for i in reversed(range(7))] + [12.0 - i for i in range(9)]
    assert asked == [(1, 3, 3), (1, 6, 6), (1, 12, 4)]  # each page at least twice the one before


def test_a_scaling_parameter_fed_by_another_step_and_a_zero_timeout_are_refused():
    """Both were taken silently: the scale at its reference (the value comes only with the
    run), a timeout of 0 as no timeout."""

    def rows(n_rows: int = 1000) -> int:
        return n_rows

    def features(rows: int) -> int:
        return rows

    upstream = component(rows, cpu=1, mem_gib=0.25, est_seconds=1)
    scaled = component(features, cpu=1, mem_gib=0.25, est_seconds=4, scales_with={"rows": 1000})
    with pytest.raises(PipelineError) as error:
        Pipeline("scaled-by-output", [upstream, scaled])
    assert "step 'features': scales_with names 'rows', which step 'rows''s output feeds" in str(error.value)
    assert "Fix: scale with a pipeline parameter" in str(error.value)
    with pytest.raises(ComponentSpecError, match=r"timeout_seconds=0: must be a number > 0 .* Fix: e\.g\."):
        component(rows, timeout_seconds=0)
    with pytest.raises(ComponentSpecError, match=r"retries=-1: must be a number >= 0\. Fix: e\.g\. retries=2"):
        component(rows, retries=-1)
