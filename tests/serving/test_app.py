"""The service's answers to bad input and faults, on a one-step toy pipeline served in
process (FastAPI's TestClient, against the session's real Prefect server)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

from planflow import OnlinePath, to_flow
from planflow.monitoring.serving_metrics import ServingMetrics
from planflow.ops.processes import wait_until
from planflow.serving.app import create_app
from planflow.serving.loader import (
    LoadedRun,
    NoCompletedRunError,
    RunOutputsError,
    ServedRuns,
    TaskRunsNotRecordedError,
    read_latest_run,
)
from planflow.serving.swap import ModelSwapper

from tests.serving.toy import Reading, make

pytestmark = pytest.mark.usefixtures("registered_blocks")


def test_bad_requests_get_a_bounded_4xx_naming_what_is_wrong():
    path = make("serving-toy-never-run")
    with TestClient(create_app(path, poll_seconds=0.5, max_body_bytes=2048)) as client:
        too_big = client.post("/predict", content=b"[" + b"1," * 4000 + b"1]")
        assert too_big.status_code == 413 and "over the limit of 2048 bytes" in too_big.json()["detail"]
        assert client.post("/predict", content=b"{not json").status_code == 400
        bad = client.post("/predict", json=[{"x": 1}, {"x": -2}])
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", 1, "x"] and bad.json()["detail"][0]["field"] == "x"
        extra = client.post("/predict", json={"x": 1, "y": 2})
        assert extra.status_code == 422 and extra.json()["detail"][0]["field"] == "y"
        assert client.post("/predict", json=[{"x": 1}] * 5).status_code == 422  # max_batch=4
        # NaN and Infinity (which Python's JSON reader takes) are not JSON: a 400 naming them (a 500 on a
        # plain float field, whose model then failed on the NaN)
        for constant in (b"NaN", b"-Infinity"):
            nan = client.post(
                "/predict", content=b'{"x": ' + constant + b"}", headers={"content-type": "application/json"}
            )
            assert nan.status_code == 400 and f"{constant.decode()} is not a JSON value" in nan.json()["detail"], (
                nan.text
            )
        # ... nor as strings, which a float field takes ("inf" reached the model: a 500)
        for text in ("inf", "Infinity"):
            as_text = client.post("/predict", json=[{"x": 1}, {"x": text}])
            assert as_text.status_code == 422, as_text.text
            (problem,) = as_text.json()["detail"]
            assert problem["loc"] == ["body", 1] and "x is inf: send a finite number" in problem["msg"], problem
        huge = client.post("/predict", content=b'{"x": -1e999}', headers={"content-type": "application/json"})
        assert huge.status_code == 400 and "-1e999 is out of a float's range" in huge.json()["detail"], huge.text
        deep = client.post("/predict", content=b"[" * 1020 + b"]" * 1020)  # nesting past Python's recursion limit
        assert deep.status_code == 400 and "nested too deeply" in deep.json()["detail"], deep.text
        # no Completed run yet: not ready, with the command that makes one
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert "Fix: planflow run serving-toy-never-run" in not_ready.json()["reason"]
        assert client.post("/predict", json={"x": 1}).status_code == 503
        assert client.get("/healthz").status_code == 200
        body = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"]["anyOf"][0]["required"] == ["x"]
        metrics = client.get("/metrics").text
    assert 'planflow_serving_errors_total{pipeline="serving-toy-never-run",reason="too_large"} 1.0' in metrics
    assert 'planflow_serving_errors_total{pipeline="serving-toy-never-run",reason="internal"} 0.0' in metrics
    assert 'planflow_serving_model_loaded{pipeline="serving-toy-never-run"} 0.0' in metrics


def _storage_file(flow_run_id: str, step: str) -> Path:
    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[step])),
            )
            return runs[0] if runs else None

    # the server records task runs from events, after the flow run's state: wait for it
    assert wait_until(lambda: asyncio.run(read()) is not None, 60), f"no task run {step} of {flow_run_id} recorded"
    return Path(asyncio.run(read()).state.data.storage_key)


def test_a_run_whose_outputs_cannot_be_read_leaves_the_previous_model_and_alerts():
    path = make("serving-toy-broken")
    state = to_flow(path.pipeline)(return_state=True)
    run_id = str(state.state_details.flow_run_id)
    _storage_file(run_id, "scale").unlink()  # the run's output is gone from storage
    metrics = ServingMetrics(pipeline=path.pipeline.name)
    swapper = ModelSwapper(path, metrics)
    swapper.current = previous = LoadedRun("earlier", "earlier-run", None, {"scale": 3.0})
    assert asyncio.run(swapper.check()) is False
    assert swapper.current is previous
    assert "the output of step 'scale' cannot be read" in swapper.problem
    assert "still serving run 'earlier-run'" in swapper.problem
    assert metrics.registry.get_sample_value("planflow_serving_model_load_failing", {"pipeline": path.pipeline.name})
    assert asyncio.run(swapper.check()) is False  # a broken run is not read again at every poll
    failures = metrics.registry.get_sample_value(
        "planflow_serving_model_load_failures_total", {"pipeline": path.pipeline.name}
    )
    assert failures == 1


def test_a_swapper_keeps_only_the_newest_broken_run():
    """Only the newest Completed run is ever read: the runs that failed before it need no
    memory (a serving process up for months kept every one)."""
    path = make("serving-toy-broken-kept")
    swapper = ModelSwapper(path, ServingMetrics(pipeline=path.pipeline.name))
    for run_id in ("run-1", "run-2", "run-3"):
        swapper._failed(run_id, RunOutputsError(f"outputs of {run_id} cannot be read (test)"))
    assert swapper._broken == "run-3"
    assert "run-3" in swapper.problem


def test_a_run_whose_task_runs_are_not_recorded_yet_is_asked_again_until_the_grace_ends():
    """Prefect 3 records task runs from events, after the flow run's Completed state: a
    run read at that moment lacks them. It is read again at the next poll, and counts as
    broken only once its end is older than the grace (CI once lost a swap so)."""
    path = make("serving-toy-unrecorded")

    @flow(name=path.pipeline.name)
    def no_task_runs() -> None:  # a Completed run of the pipeline's flow, without task runs
        return None

    run_id = str(no_task_runs(return_state=True).state_details.flow_run_id)
    metrics = ServingMetrics(pipeline=path.pipeline.name)
    swapper = ModelSwapper(path, metrics)
    failing = {"pipeline": path.pipeline.name}
    assert asyncio.run(swapper.check()) is False
    assert "has no Completed task run for scale" in swapper.problem
    assert "waiting for the server to record them" in swapper.problem
    assert f"planflow run {path.pipeline.name}" in swapper.problem and "<pipeline>" not in swapper.problem
    assert not metrics.registry.get_sample_value("planflow_serving_model_load_failing", failing)
    swapper.record_grace_seconds = 0.0  # its end is now older than the grace: broken
    assert asyncio.run(swapper.check()) is False
    assert run_id in swapper.problem and "waiting" not in swapper.problem
    assert metrics.registry.get_sample_value("planflow_serving_model_load_failing", failing) == 1

    async def read(pipeline: str):
        async with get_client() as client:
            return await read_latest_run(client, pipeline, ["scale"], wait_seconds=0.5)

    with pytest.raises(TaskRunsNotRecordedError, match="waited 0.5 s for the server to record them"):
        asyncio.run(read(path.pipeline.name))
    with pytest.raises(NoCompletedRunError, match="Fix: planflow run serving-toy-never-run-either"):
        asyncio.run(read("serving-toy-never-run-either"))


def test_the_toy_is_served_from_its_run():
    path = make("serving-toy-served")
    to_flow(path.pipeline)(factor=5.0)
    with TestClient(create_app(path, poll_seconds=0.5)) as client:
        assert wait_until(lambda: client.get("/readyz").status_code == 200, 30), client.get("/readyz").json()
        answer = client.post("/predict", json=[{"x": 1.0}, {"x": 2.0}])
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == [5.0, 10.0]
        assert client.get("/readyz").json()["ready"] is True


def test_the_loader_alone_reads_results_planflow_serialized():
    """A process that imports only the serving loader (bench.serving_baseline does) can
    read a run's outputs: planflow's result serializer is registered by the loader, not
    only by the runtime modules the service happens to import."""
    import subprocess
    import sys

    code = (
        "import planflow.serving.loader\n"
        "from prefect.serializers import Serializer\n"
        "print(type(Serializer(type='planflow')).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "PlanflowSerializer", out.stderr[-2000:]


def test_a_task_run_listed_completed_before_its_state_arrives_is_waited_for():
    """CI once read a task run that the server listed as Completed with `state` None (the
    swap then failed on 'NoneType has no is_paused'). That moment cannot be provoked, so the
    first answer of the real server is simulated without its states; the loader must wait
    for the next answer, not fail."""
    path = make("serving-toy-stateless")
    to_flow(path.pipeline)(factor=3.0)

    async def read():
        async with get_client() as client:
            real_read, calls = client.read_task_runs, []

            async def first_answer_without_states(**kwargs):
                runs = await real_read(**kwargs)
                calls.append(len(runs))
                return [r.model_copy(update={"state": None}) for r in runs] if len(calls) == 1 else runs

            client.read_task_runs = first_answer_without_states
            loaded = await read_latest_run(client, path.pipeline.name, ["scale"], wait_seconds=30)
            return loaded, calls

    loaded, calls = asyncio.run(read())
    assert loaded.outputs == {"scale": 3.0}
    assert len(calls) == 2 and calls[0] >= 1, calls


def test_a_client_that_trickles_its_head_or_body_is_cut_off(monkeypatch):
    """`planflow serve` with one replica held a partial request head for as long as the
    client liked, and a body declared as 100 bytes with 1 sent for 9 minutes and more."""
    import socket
    import threading
    import time

    import uvicorn

    from planflow.serving import app as serving_app
    from planflow.serving.single_write import ServingProtocol

    from tests.conftest import free_port

    monkeypatch.setattr(serving_app, "BODY_SECONDS", 0.5)
    quick = type("QuickHeads", (ServingProtocol,), {"header_seconds": 0.5})
    port = free_port()
    config = uvicorn.Config(
        create_app(make("serving-toy-slow"), poll_seconds=0.5),
        host="127.0.0.1",
        port=port,
        http=quick,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started, 20), "uvicorn did not start within 20 s"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\n")  # the head never ends
            began = time.monotonic()
            assert sock.recv(1024) == b""  # closed by the server
            assert time.monotonic() - began < 5
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
            sock.sendall(head + b"{")  # 1 of 100 bytes
            began = time.monotonic()
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"not received within 0.5 s" in answer and time.monotonic() - began < 5
            assert b"connection: close" in answer.lower()  # the rest of the body is not waited for
            sock.settimeout(5)
            assert sock.recv(1024) == b""
        # a body trickled after an answer that did not read it: h11 waits for its end, and
        # each byte restarted uvicorn's keep-alive timer (open 15 s and more after a /healthz)
        for head in (
            b"GET /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n",
            b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n",  # a 413
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(head)
                answer = sock.recv(4096)
                assert answer.split(b" ")[1] in (b"200", b"413"), answer
                sock.settimeout(0.25)
                began, closed = time.monotonic(), False
                while not closed and time.monotonic() - began < 10:
                    try:
                        sock.sendall(b"x")
                        closed = sock.recv(1024) == b""
                    except TimeoutError:
                        continue
                    except (BrokenPipeError, ConnectionResetError):
                        closed = True
                assert closed, f"{head.split(b' ')[:2]}: still open after 10 s of a trickled body"
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_failing_step_is_answered_without_its_message_and_a_slow_one_does_not_hold_readyz():
    """The online path's exception text reached any client (a step's `secret=...` came back
    word for word); and the steps ran on the event loop, so /readyz waited for a slow one."""
    import threading

    entered, release = threading.Event(), threading.Event()

    def predict(request: list[Reading], scale: float) -> list[float]:
        if request[0].x == 13:
            raise RuntimeError("secret=hunter2 in the model's message")
        if request[0].x == 7:
            entered.set()
            release.wait(20)
        return [r.x * scale for r in request]

    path = OnlinePath(make("serving-toy-guarded").pipeline, steps={"predict": predict}, load=["scale"], max_batch=4)
    with TestClient(create_app(path, poll_seconds=0.5)) as client:
        client.app.state.swapper.current = LoadedRun("id", "a-run", None, {"scale": 2.0})
        failed = client.post("/predict", json={"x": 13})
        assert failed.status_code == 500 and "RuntimeError" in failed.text, failed.text
        assert "hunter2" not in failed.text
        slow: dict = {}
        waiting = threading.Thread(target=lambda: slow.update(answer=client.post("/predict", json={"x": 7})))
        waiting.start()
        try:
            assert entered.wait(20), "the slow step never started"
            ready = client.get("/readyz")  # answered while the step still runs
            assert ready.status_code == 200 and not release.is_set() and "answer" not in slow
        finally:
            release.set()
            waiting.join(30)
        assert slow["answer"].json()["prediction"] == 14.0


def test_a_prefect_api_out_of_reach_is_named_while_the_loaded_model_is_served():
    """With a model loaded and the Prefect API down, /readyz stays ready (the model is
    served) and its `problem` (the swapper's) says the API is out of reach since when (it said null); the
    next check that reaches the API clears it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from planflow.ops.processes import free_port

    path = make("serving-toy-api-down")
    swapper = ModelSwapper(path, ServingMetrics(pipeline=path.pipeline.name))
    swapper.current = LoadedRun("earlier", "earlier-run", None, {"scale": 3.0})
    swapper.problem = None

    async def poll_until(done: Callable[[], bool], bound: float = 30.0) -> bool:
        """The swapper polls until `done()` (True) or `bound` s pass (False). A check
        against a closed port takes 1.5-2 s at least (the client's connection retries)."""
        poller = asyncio.ensure_future(swapper.poll(0.2))
        try:
            deadline = time.monotonic() + bound
            while not done():
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.05)
            return True
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    closed = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    with temporary_settings(updates={PREFECT_API_URL: closed, PREFECT_CLIENT_MAX_RETRIES: 0}):
        assert asyncio.run(poll_until(lambda: swapper.problem is not None)), "no problem named within 30 s"
    assert "cannot reach the Prefect API" in swapper.problem, swapper.problem
    assert "still serving run 'earlier-run'" in swapper.problem and "Fix:" in swapper.problem
    assert asyncio.run(poll_until(lambda: swapper.problem is None)), swapper.problem  # the API answers again
    assert swapper.current is not None and swapper.current.flow_run_name == "earlier-run"


def test_with_nothing_served_a_newest_run_that_cannot_be_read_falls_back_to_the_last_good_one():
    """A service started when the pipeline's newest Completed run had no outputs to read
    (distributed mode, say) served nothing until a new run in process; it now serves the
    last run that can be read, says so, and keeps the failing-load alert up."""
    path = make("serving-toy-fallback")
    good = str(to_flow(path.pipeline)(factor=7.0, return_state=True).state_details.flow_run_id)

    @flow(name=path.pipeline.name)
    def no_task_runs() -> None:  # a newer Completed run of the pipeline's flow, without outputs
        return None

    no_task_runs()
    metrics = ServingMetrics(pipeline=path.pipeline.name)
    swapper = ModelSwapper(path, metrics)
    swapper.record_grace_seconds = 0.0  # not waited for: broken at once
    assert wait_until(lambda: asyncio.run(swapper.check()), 30), swapper.problem
    assert swapper.current.flow_run_id == good and swapper.current.outputs["scale"] == 7.0
    assert swapper.problem.startswith(f"serving an older run, '{swapper.current.flow_run_name}': ")
    assert "has no Completed task run for scale" in swapper.problem
    failing = {"pipeline": path.pipeline.name}
    assert metrics.registry.get_sample_value("planflow_serving_model_load_failing", failing) == 1
    assert asyncio.run(swapper.check()) is False  # the broken newest run is not read again


def test_a_newest_run_in_distributed_mode_is_passed_over_at_once_not_after_the_grace():
    """A distributed run's outputs are in its steps' own flow runs: it never gets the task
    runs serving reads. A service started after one waited the whole grace (2 minutes,
    not ready) before it served the last run in process; it now serves that at once."""
    path = make("serving-toy-distributed")
    good = str(to_flow(path.pipeline)(factor=3.0, return_state=True).state_details.flow_run_id)

    @flow(name=path.pipeline.name)
    def distributed(factor: float = 1.0, mode: str = "distributed") -> None:  # as a distributed run is recorded
        return None

    distributed()
    swapper = ModelSwapper(path, ServingMetrics(pipeline=path.pipeline.name))
    assert swapper.record_grace_seconds > 60  # the grace stands: the run is not waited for all the same
    assert wait_until(lambda: asyncio.run(swapper.check()), 30), swapper.problem
    assert swapper.current.flow_run_id == good and swapper.current.outputs["scale"] == 3.0
    assert "ran in distributed mode" in swapper.problem and "Fix: run the pipeline in process" in swapper.problem
    # passed over, which is no failure to load: the alert's gauge stays down, nothing counted
    failing = {"pipeline": path.pipeline.name}
    assert not swapper.metrics.registry.get_sample_value("planflow_serving_model_load_failing", failing)
    assert not swapper.metrics.registry.get_sample_value("planflow_serving_model_load_failures_total", failing)


def test_with_a_deployment_named_only_its_runs_are_served():
    """Any Completed run replaced the served model, a run by hand with other parameters
    included (a trial's debug run was served live). `--deployment` serves only the runs of
    that deployment: here an older one, not the newest run by hand."""
    from prefect.flow_engine import run_flow

    path = make("serving-toy-deployed")
    flow_ = to_flow(path.pipeline)
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(path.pipeline.name)
        deployment = client.create_deployment(flow_id=flow_id, name="nightly")
        scheduled = client.create_flow_run_from_deployment(deployment, parameters={"factor": 9.0})
    state = run_flow(flow_, flow_run=scheduled, parameters={"factor": 9.0}, return_type="state")
    assert state.is_completed(), state
    flow_(factor=5.0)  # newer, by hand

    metrics = ServingMetrics(pipeline=path.pipeline.name)
    nightly = ModelSwapper(path, metrics, ServedRuns(deployment=f"{path.pipeline.name}/nightly"))
    assert wait_until(lambda: asyncio.run(nightly.check()), 30), nightly.problem
    assert nightly.current.flow_run_id == str(scheduled.id) and nightly.current.outputs["scale"] == 9.0
    newest = ModelSwapper(path, ServingMetrics(pipeline=path.pipeline.name))
    assert wait_until(lambda: asyncio.run(newest.check()), 30), newest.problem
    assert newest.current.outputs["scale"] == 5.0
    nothing = ModelSwapper(path, ServingMetrics(pipeline=path.pipeline.name), ServedRuns(deployment="weekly"))
    assert asyncio.run(nothing.check()) is False and nothing.current is None
    assert "no Completed run of deployment 'weekly'" in nothing.problem
    assert f"Fix: prefect deployment run '{path.pipeline.name}/weekly'" in nothing.problem


def test_with_a_tag_named_only_the_runs_carrying_it_are_served():
    """A run is promoted by a tag (`prefect deployment run ... --tag release`, a deployment's
    `tags:`): `planflow serve --tag release` serves the newest run carrying it, not a
    newer run without it; with every tag named, a run must carry all of them."""
    from prefect import tags

    path = make("serving-toy-tagged")
    flow_ = to_flow(path.pipeline)
    with tags("release", "eu"):
        promoted = str(flow_(factor=4.0, return_state=True).state_details.flow_run_id)
    flow_(factor=6.0)  # newer, not promoted
    release = ModelSwapper(path, ServingMetrics(pipeline=path.pipeline.name), ServedRuns(tags=("release",)))
    assert wait_until(lambda: asyncio.run(release.check()), 30), release.problem
    assert release.current.flow_run_id == promoted and release.current.outputs["scale"] == 4.0
    both = ModelSwapper(path, ServingMetrics(pipeline=path.pipeline.name), ServedRuns(tags=("release", "us")))
    assert asyncio.run(both.check()) is False and both.current is None
    assert "no Completed run tagged 'release' and 'us'" in both.problem
    assert f"Fix: prefect deployment run '{path.pipeline.name}/DEPLOYMENT' --tag release --tag us" in both.problem


def test_a_deployment_the_pipeline_does_not_have_is_named_with_the_ones_it_has():
    """`planflow serve NAME --deployment nosuch` started and was never ready, its /readyz
    saying to run a deployment that does not exist."""
    from planflow.serving.loader import missing_deployment

    path = make("serving-toy-deployed")
    to_flow(path.pipeline)(factor=1.0)  # the flow is known to the server

    async def check() -> list[str | None]:
        async with get_client() as client:
            flow_id = (await client.read_flow_by_name("serving-toy-deployed")).id
            await client.create_deployment(flow_id=flow_id, name="nightly")
        names = ("nosuch", "nightly", "serving-toy-deployed/nightly", "other-flow/nightly")
        return [await missing_deployment("serving-toy-deployed", name) for name in names]

    nosuch, plain, full, other = asyncio.run(check())
    assert plain is None and full is None
    assert nosuch == (
        "--deployment nosuch: pipeline 'serving-toy-deployed' has no deployment named 'nosuch'; its deployments: "
        "nightly. Fix: --deployment nightly"
    )
    assert "('other-flow' is not this pipeline's flow, 'serving-toy-deployed')" in other


def test_a_check_that_never_ends_is_cut_and_named_and_the_next_one_runs(monkeypatch):
    """Reading a run's outputs from a storage that never answers held the poll for good:
    no swap ever again, and /readyz named no problem."""
    from planflow.serving import swap

    path = make("serving-toy-hang")
    to_flow(path.pipeline)(factor=2.0)
    reads = []

    async def never(*args, **kwargs):
        reads.append(1)
        await asyncio.sleep(3600)

    monkeypatch.setattr(swap, "load_run", never)
    monkeypatch.setattr(swap, "CHECK_SECONDS", 0.5)
    swapper = ModelSwapper(path, ServingMetrics(pipeline=path.pipeline.name))

    async def poll_a_while() -> None:
        task = asyncio.create_task(swapper.poll(0.2))
        await asyncio.sleep(2.5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(poll_a_while())
    assert len(reads) >= 2, reads  # cut, and asked again
    assert "did not finish within 0.5 s" in swapper.problem, swapper.problem
