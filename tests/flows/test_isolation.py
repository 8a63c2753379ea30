"""Declared CPUs honoured and process isolation, on the session's real Prefect server:
BLAS threads held to `cpu`, a pure-Python pair in parallel processes, a measured peak
memory, and the errors of bad input."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from uuid import UUID

import numpy
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prometheus_client import CollectorRegistry
from rich.console import Console
from threadpoolctl import threadpool_info, threadpool_limits

from planflow import ComponentSpecError, Pipeline, PipelineError, PipelineRunError, component, to_flow
from planflow.cli.common import PIPE_WIDTH
from planflow.cli.pipelines import print_summary
from planflow.monitoring.metrics import RunRecorder
from planflow.runtime.cpulimits import BlasLimit
from planflow.runtime.dispatch import StepRecord
from planflow.runtime.events import StepEvent
from planflow.runtime.isolation import Usage
from planflow.runtime.reporters import MetricsReporter
from planflow.runtime.runner import add_listener

MIB = 2**20
PARTNER_WAIT_SECONDS = 60.0  # bound on how long each of the pair waits to see the other


def _blas_threads() -> int:
    return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


@component(cpu=1, est_seconds=1)
def blas_in_thread(n: int = 300) -> int:
    """numpy's matmul, reporting the BLAS threads it was allowed while it ran."""
    a = numpy.ones((n, n))
    (a @ a).sum()
    return _blas_threads()


@component(cpu=1, est_seconds=1, isolation="process")
def blas_in_process(n: int = 300) -> int:
    a = numpy.ones((n, n))
    (a @ a).sum()
    return _blas_threads()


def _spin(folder: str, me: str, partner: str) -> dict:
    """Pure-Python busy work until the partner is seen running too (bounded)."""
    Path(folder, me).touch()
    deadline, seen, count = time.monotonic() + PARTNER_WAIT_SECONDS, False, 0
    while time.monotonic() < deadline and not seen:
        for _ in range(20_000):
            count += 1
        seen = Path(folder, partner).exists()
    cpu0 = time.process_time()
    while time.process_time() - cpu0 < 0.3:  # some CPU-bound work with the partner alive
        count += 1
    return {"pid": os.getpid(), "saw_partner": seen, "count": count}


@component(cpu=1, est_seconds=1)
def spin_a(folder: str) -> dict:
    return _spin(folder, "a", "b")


@component(cpu=1, est_seconds=1)
def spin_b(folder: str) -> dict:
    return _spin(folder, "b", "a")


@component(cpu=1, mem_gib=0.5, est_seconds=1, isolation="process")
def allocate(mib: int = 300) -> int:
    block = b"\x01" * (mib * MIB)  # written, so every page is resident
    return len(block)


@component(cpu=1, mem_gib=0.5, est_seconds=1)
def big_input(mib: int = 200) -> bytes:
    return b"\x02" * (mib * MIB)


@component(cpu=1, mem_gib=0.5, est_seconds=1, isolation="process")
def reads_input(big_input: bytes) -> int:
    return len(big_input)  # adds nothing of its own: its input's copy is its memory


@component(cpu=1, est_seconds=1, isolation="process")
def returns_a_lock() -> object:
    return threading.Lock()


async def _artifacts(flow_run_id: str):
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)]))
        )


def _run(pipeline: Pipeline, **params) -> tuple[dict, dict]:
    """Run `pipeline` as its flow; return each step's output and the run's summary."""
    outputs: dict = {}
    remove = add_listener(lambda event, record: event == "completed" and outputs.update({record.step: record.result}))
    try:
        summary = to_flow(pipeline)(**params)
    finally:
        remove()
    return outputs, summary


@pytest.mark.usefixtures("registered_blocks")
def test_cpu1_component_runs_blas_with_one_thread():
    with threadpool_limits(limits=2, user_api="blas"):  # two BLAS threads by default, whatever the machine has
        outputs, summary = _run(Pipeline("cpu-blas", [blas_in_thread, blas_in_process]))
        assert _blas_threads() == 2  # the process's own setting is back after the run
    assert outputs == {"blas_in_thread": 1, "blas_in_process": 1}
    steps = summary["steps"]
    assert steps["blas_in_thread"]["usage"] is None  # a thread of this process is not measured
    assert steps["blas_in_process"]["usage"]["pid"] != os.getpid()


def test_blas_limit_is_the_largest_declaration_running():
    """In-process components share one BLAS setting: the largest ceil(cpu) among those running."""
    with threadpool_limits(limits=2, user_api="blas"):
        limit, seen = BlasLimit(), []
        for change in (lambda: limit.enter(1), lambda: limit.enter(2), lambda: limit.exit(2), lambda: limit.exit(1)):
            change()
            seen.append(_blas_threads())
    assert seen == [1, 2, 1, 2]


@pytest.mark.usefixtures("registered_blocks")
def test_process_isolated_pure_python_pair_runs_in_parallel(tmp_path):
    pipeline = Pipeline("cpu-pair", [spin_a, spin_b], params={"folder": ""}, isolation="process")
    outputs, summary = _run(pipeline, folder=str(tmp_path))
    a, b = outputs["spin_a"], outputs["spin_b"]
    assert a["saw_partner"] and b["saw_partner"], "each step waits (bounded) until the other runs"
    assert len({a["pid"], b["pid"], os.getpid()}) == 3  # two processes of their own
    usage = {name: summary["steps"][name]["usage"] for name in ("spin_a", "spin_b")}
    assert (usage["spin_a"]["pid"], usage["spin_b"]["pid"]) == (a["pid"], b["pid"])
    assert max(u["started_at"] for u in usage.values()) < min(u["finished_at"] for u in usage.values())
    for name, u in usage.items():  # each spun 0.3 s of CPU after it saw the other
        assert u["cpu_seconds"] >= 0.29, (name, u)
        print(f"{name}: cpu {u['cpu_seconds']:.2f} s over wall {u['wall_seconds']:.2f} s")
    assert summary["steps"]["spin_a"]["declared_cpu"] == 1.0


@pytest.mark.usefixtures("registered_blocks")
def test_isolated_component_reports_its_peak_memory():
    outputs, summary = _run(Pipeline("cpu-memory", [allocate]))
    assert outputs == {"allocate": 300 * MIB}
    step = summary["steps"]["allocate"]
    peak = step["usage"]["peak_mem_bytes"]
    whole = step["usage"]["peak_rss_bytes"]
    print(f"allocated 300 MiB, measured peak {peak / MIB:.1f} MiB (the whole process {whole / MIB:.1f} MiB)")
    assert abs(peak - 300 * MIB) <= 0.1 * 300 * MIB
    assert step["declared_mem_gib"] == 0.5 and step["peak_mem_gib"] == pytest.approx(peak / 2**30, abs=1e-4)
    history = [
        a.data for a in asyncio.run(_artifacts(summary["flow_run_id"])) if (a.key or "").startswith("planflow-history-")
    ]
    assert len(history) == 1 and history[0]["peak_mem_gib"] == pytest.approx(peak / 2**30)


@pytest.mark.usefixtures("registered_blocks")
def test_an_isolated_steps_peak_memory_counts_its_unpickled_inputs():
    outputs, summary = _run(Pipeline("cpu-memory-input", [big_input, reads_input]))
    assert outputs["reads_input"] == 200 * MIB
    peak = summary["steps"]["reads_input"]["usage"]["peak_mem_bytes"]
    print(f"an input of 200 MiB, measured peak {peak / MIB:.1f} MiB")
    assert abs(peak - 200 * MIB) <= 0.15 * 200 * MIB  # was 0-2 MiB: the copy was in the baseline


def test_measured_usage_becomes_metrics():
    recorder = RunRecorder("cpu-metrics", registry=CollectorRegistry())
    record = StepRecord("fit", "local", "Completed", 0.0, 2.0)
    record.usage = Usage(1, 0.0, 2.0, 1.5, 500 * MIB, 100 * MIB)
    MetricsReporter(recorder).on_step(StepEvent("completed", record, run=None))  # type: ignore[arg-type]
    labels = {"pipeline": "cpu-metrics", "component": "fit", "pool": "local"}
    sample = recorder.registry.get_sample_value
    assert sample("planflow_component_peak_memory_bytes", labels) == 400 * MIB
    assert sample("planflow_component_cpu_seconds", labels) == 1.5


def test_run_summary_shows_use_beside_declaration(capsys, wide_console):
    measured = {
        **{"state": "Completed", "pool": "local", "seconds": 1.0, "metrics": {}},
        **{"declared_cpu": 1.0, "declared_mem_gib": 0.5, "cpu_seconds": 0.8, "peak_mem_gib": 0.293, "usage": {}},
    }
    in_thread = {**measured, "cpu_seconds": None, "peak_mem_gib": None, "usage": None}
    print_summary({"pipeline": "cpu-summary", "steps": {"fit": measured, "load": in_thread}})
    out = capsys.readouterr().out
    assert "cpu declared / used s" in out and "mem GiB declared / peak" in out, out
    assert "1 / 0.80" in out and "0.5 / 0.293" in out and "1 / -" in out and "0.5 / -" in out, out


@pytest.fixture
def wide_console(monkeypatch):
    """The table as a pipe gets it (the module's console took COLUMNS, if any, at import:
    80 columns wrap the headers this test reads)."""
    monkeypatch.setattr("planflow.cli.pipelines.console", Console(width=PIPE_WIDTH))


@pytest.mark.usefixtures("registered_blocks")
def test_unpicklable_output_of_an_isolated_step_fails_it_clearly():
    with pytest.raises(PipelineRunError) as failed:
        to_flow(Pipeline("cpu-unpicklable", [returns_a_lock]))()
    message = str(failed.value)
    for part in ("step 'returns_a_lock'", "_thread.lock", "cannot be pickled", "isolation='thread'"):
        assert part in message, message


def test_unknown_isolation_is_refused_where_it_is_declared():
    with pytest.raises(ComponentSpecError, match=r"isolation='processes': must be 'thread' or 'process'"):
        component(cpu=1, isolation="processes")(_typed)
    with pytest.raises(PipelineError, match=r"isolation='proces': must be 'thread' or 'process'"):
        Pipeline("cpu-bad", [allocate], isolation="proces")
    with pytest.raises(PipelineError, match=r"`isolation:` is 'subprocess', but it must be 'thread' or 'process'"):
        Pipeline.from_dict({"name": "cpu-bad", "isolation": "subprocess", "steps": [{"uses": "toy_dags:numbers"}]})
    from_yaml = Pipeline.from_dict(
        {
            "name": "cpu-yaml",
            "isolation": "process",
            "steps": [{"uses": "toy_dags:numbers"}, {"uses": "toy_dags:total", "resources": {"isolation": "thread"}}],
        }
    )
    assert (from_yaml.isolation_of("numbers"), from_yaml.isolation_of("total")) == ("process", "thread")


def _typed(x: int) -> int:
    return x


QUICK_ISOLATED_FIRST = """
import time
from planflow import Pipeline, component, to_flow
from planflow.runtime import isolation

isolation.PRELOAD.append("slow_forkserver_import")  # a forkserver start of 2 s at least, however fast the machine

@component(cpu=1, mem_gib=0.25, est_seconds=0.1, isolation="process", timeout_seconds=1)
def quick(seconds: float = 0.05) -> float:
    time.sleep(seconds)
    return seconds

@component(cpu=1, mem_gib=0.25, est_seconds=0.1)
def beside(seconds: float = 0.05) -> float:
    time.sleep(seconds)
    return seconds

from planflow.runtime.events import add_listener

seen, started = {}, {}
def heard(event, record):
    if event == "completed":
        seen[record.step] = (time.monotonic(), record.learned_seconds)
    if event == "started":
        started[record.step] = record.started
add_listener(heard)
summary = to_flow(Pipeline("isolated-first", [quick, beside]))()
print("STATES", {s["state"] for s in summary["steps"].values()})
print("LEARNED", seen["quick"][1])
print("SUMMARY_SECONDS", summary["steps"]["quick"]["seconds"])
print("BESIDE_AHEAD", seen["quick"][0] - seen["beside"][0])
print("STARTED_AFTER", started["quick"] - started["beside"])
"""


def test_the_forkserver_start_is_not_the_first_isolated_steps_time(cli_env, tmp_path):
    """A fresh process whose first step is isolated, 0.05 s of work with timeout_seconds=1:
    the forkserver (planflow and Prefect imported, seconds) starts beside the run and the
    step is handed to its task once it is up. The step used to start it itself and time
    out (a 0.1 s step with timeout_seconds=2 failed at 7.4 s), and the child's broken pipe
    printed a traceback. A thread step of the same round does not wait for it: it used to
    (the dispatcher's thread waited), ending 0.1 s before the isolated step; now seconds."""
    import subprocess
    import sys

    slow = tmp_path
    (slow / "slow_forkserver_import.py").write_text("import time\n\ntime.sleep(2)\n")
    env = dict(cli_env, PYTHONPATH=os.pathsep.join(filter(None, [str(slow), cli_env.get("PYTHONPATH")])))
    ran = subprocess.run(
        [sys.executable, "-c", QUICK_ISOLATED_FIRST], env=env, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "STATES {'Completed'}" in ran.stdout, ran.stdout[-3000:]
    # what the history learns leaves that wait out (the dispatcher's clock started before it)
    learned = float(ran.stdout.split("LEARNED ")[1].split()[0])
    assert learned < 1.0, ran.stdout[-3000:]
    # and so does the step's time shown (its log line, the summary, planned versus actual): it
    # was release to completion, the wait included (2.38 s for a step of 0.1 s)
    shown = float(ran.stdout.split("SUMMARY_SECONDS ")[1].split()[0])
    assert shown < 1.0, ran.stdout[-3000:]
    ahead = float(ran.stdout.split("BESIDE_AHEAD ")[1].split()[0])
    assert ahead > 1.0, ran.stdout[-3000:]  # the forkserver's start-up: 2 s and more
    # its "started" event (the Overrun alert's clock, the calendar's) is said when its task
    # starts, after that wait: it was said at its release, with the thread step's, and the
    # alert fired for a 0.1 s step
    after = float(ran.stdout.split("STARTED_AFTER ")[1].split()[0])
    assert after > 1.0, ran.stdout[-3000:]
    assert "BrokenPipeError" not in ran.stderr and "Traceback" not in ran.stderr, ran.stderr[-3000:]


ISOLATED_CACHED = """
import sys
import time
from planflow import Pipeline, component, to_flow
from planflow.runtime import isolation
from planflow.runtime.events import add_listener

isolation.PRELOAD.append("slow_forkserver_import")  # a forkserver start of 2 s at least

@component(cpu=1, mem_gib=0.25, est_seconds=0.1, isolation="process", cache="inputs")
def kept(token: str = "x") -> str:
    return token * 2

@component(cpu=1, mem_gib=0.25, est_seconds=0.1)
def beside(seconds: float = 0.05) -> float:
    time.sleep(seconds)
    return seconds

# at the top level, as a script is written (no `if __name__ == "__main__":`)
print("RUNS AS", __name__, flush=True)
times = {}
add_listener(lambda event, record: times.setdefault((event, record.step), (record.started, record.finished)))
summary = to_flow(Pipeline("isolated-cached", [kept, beside]))(token=sys.argv[1])
print("STATE", summary["steps"]["kept"]["state"])
print("KEPT_ENDED", times[("completed", "kept")][1] - times[("started", "beside")][0])
"""


def test_a_script_runs_isolated_steps_and_one_read_from_the_cache_does_not_wait(cli_env, tmp_path):
    """A script that calls its flow at the top level, as scripts are written (no
    `if __name__ == "__main__":`), with an isolated step: each step's process ran the
    whole script again (Python's multiprocessing imports the parent's main file in each
    forkserver child): a second flow run, failed, and the step failed with "its process
    exited with code 1". Now the script runs once per call and the step completes.

    Run again in a fresh process, that step is read back from the cache (`cache="inputs"`):
    its function, the only part that needs the forkserver, is not called, so it does not
    wait for the forkserver's start (2 s here). It waited: Cached 2 s and more after the
    thread step released with it."""
    import subprocess
    import sys

    (tmp_path / "slow_forkserver_import.py").write_text("import time\n\ntime.sleep(2)\n")
    (tmp_path / "isolated_cached.py").write_text(ISOLATED_CACHED)  # a file: the cache key reads its source
    env = dict(cli_env, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), cli_env.get("PYTHONPATH")])))
    token = f"t{time.time_ns()}"
    runs = []
    for _ in range(2):
        ran = subprocess.run(
            [sys.executable, str(tmp_path / "isolated_cached.py"), token],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        runs.append(ran.stdout)
    assert "STATE Completed" in runs[0], runs[0][-3000:]
    assert [r.count("RUNS AS") for r in runs] == [1, 1], runs  # not again as __mp_main__
    assert "STATE Cached" in runs[1], runs[1][-3000:]
    ended = float(runs[1].split("KEPT_ENDED ")[1].split()[0])
    assert ended < 1.0, runs[1][-3000:]


@component(cpu=1, est_seconds=1, isolation="process")
def logs_to_prefect() -> int:
    from prefect import get_run_logger

    get_run_logger().info("from the child")
    return 1


@pytest.mark.usefixtures("registered_blocks")
def test_prefects_run_context_in_an_isolated_step_is_named_with_the_fix():
    """get_run_logger in the child failed with Prefect's bare 'no active flow or task run
    context'; the step now says where it runs and what to use instead."""
    with pytest.raises(PipelineRunError) as failed:
        to_flow(Pipeline("iso-logger", [logs_to_prefect]))()
    message = str(failed.value)
    assert "step 'logs_to_prefect' (isolation='process') asked for Prefect's run context" in message, message
    assert "Fix: use print() or logging.getLogger(__name__) there" in message, message
    # where, instead of the child's traceback (the terminal showed it cut, its header dropped)
    assert f"at {__file__}:" in message and "in logs_to_prefect, which its own process" in message, message
    assert "Traceback" not in message and "File " not in message, message


@component(cpu=1, est_seconds=1)
def returns_a_lock_in_a_thread() -> object:
    return threading.Lock()


@pytest.mark.usefixtures("registered_blocks")
def test_an_output_that_cannot_be_stored_is_said_in_the_steps_log():
    """In a thread the step completes (Prefect only warns, naming options a component does
    not take); planflow's own warning in its log names the step, what is lost and the fix."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    summary = to_flow(Pipeline("thread-unstorable", [returns_a_lock_in_a_thread]))()
    assert summary["steps"]["returns_a_lock_in_a_thread"]["state"] == "Completed"
    run_id = UUID(summary["flow_run_id"])
    deadline, said = time.monotonic() + 30, []
    while not said and time.monotonic() < deadline:  # the run's logs reach the server in batches
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        said = [log.message for log in logs if "cannot be stored" in log.message]
        time.sleep(0.5)
    assert said, "no planflow warning in the run's log"
    assert "step 'returns_a_lock_in_a_thread' returned a lock that cannot be stored" in said[0], said
    assert "cache='inputs' cannot skip it. Fix: return plain data" in said[0], said


@component(cpu=1, mem_gib=0.25, est_seconds=0.1, isolation="process", timeout_seconds=30)
def timed_in_a_process() -> int:
    return 1


@component(cpu=1, mem_gib=0.25, est_seconds=0.1, timeout_seconds=30)
def timed_in_a_thread() -> int:
    return 2


@pytest.mark.usefixtures("registered_blocks")
def test_prefects_thread_timeout_warning_is_left_out_for_a_step_whose_process_is_killed_at_its_timeout():
    """Prefect warns, for each task with a timeout in a worker thread, that the timeout
    cannot interrupt it: for an isolated step, which planflow kills at its timeout, that
    said the opposite of what happens. A thread step keeps the warning (true of it)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    summary = to_flow(Pipeline("timeout-warnings", [timed_in_a_process, timed_in_a_thread]))()
    run_id = UUID(summary["flow_run_id"])
    deadline, warned = time.monotonic() + 30, []
    while not warned and time.monotonic() < deadline:  # the run's logs reach the server in batches
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        warned = [log for log in logs if "cannot interrupt blocking operations" in log.message]
        time.sleep(0.5)
    assert len(warned) == 1, [w.message for w in warned]
    with get_client(sync_client=True) as client:
        warned_task = client.read_task_run(warned[0].task_run_id)
    assert warned_task.name.startswith("timed_in_a_thread"), warned_task.name


def test_a_deferred_isolated_step_is_said_to_start_even_when_its_wait_fails():
    """A step whose submission waits for the forkserver (executors._SubmittedLater): when the
    wait itself fails, its "started" is still said (before the failure the dispatcher reads
    from its future); it was skipped, and reporters heard "failed" with no start."""
    from planflow.runtime.executors import _SubmittedLater

    said: list[float] = []

    def cache_check_fails() -> bool:
        raise OSError("result storage unreadable")

    future = _SubmittedLater(
        "iso", lambda: pytest.fail("not submitted after a failed wait"), said.append, cache_check_fails
    )
    done = threading.Event()
    future.add_done_callback(lambda _f: done.set())
    assert done.wait(30)
    with pytest.raises(OSError, match="result storage unreadable"):
        future.result()
    assert len(said) == 1 and said[0] >= 0, said
