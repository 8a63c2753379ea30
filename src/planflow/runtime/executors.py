"""Where the steps the dispatcher releases run: one interface, two executors.

- InProcessExecutor (this module): each step is a task of the current flow run, run
  by the flow's ThreadPoolTaskRunner.
- DistributedExecutor (distributed.py): each step is a child flow run of its pool's
  component deployment, on that pool's work pool.

The dispatcher calls `start(step, outputs)` for each step it releases and gets back a
future; `execute` wraps one dispatch in the executor's context (thread pools, checks)
and lets it turn what the futures returned into the steps' outputs.
"""

from __future__ import annotations

import contextvars
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Any, Protocol

from prefect.context import FlowRunContext

from planflow.core.pipeline import Pipeline
from planflow.runtime.caching import read_back
from planflow.runtime.dispatch import Admit, Assignment, ResourceLedger, StepRecord, dispatch
from planflow.runtime.isolation import UsageLog, forkserver_is_ready, forkserver_ready, step_function, warm_forkserver
from planflow.runtime.tags import step_task
from planflow.runtime.timeout_warning import isolated_timeouts


class StepFuture(Protocol):
    """What `start` returns: a Prefect future or a concurrent.futures.Future."""

    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...

    def result(self) -> Any: ...


class Executor(ABC):
    """Runs released steps. A context manager around one dispatch: `__enter__` checks
    and opens what the executor needs, `__exit__` waits for what it started."""

    ledger: ResourceLedger | None = None  # the dispatch's, while it runs (a run again may take more)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    @abstractmethod
    def start(self, step: str, outputs: dict[str, Any]) -> StepFuture:
        """Launch `step` with the outputs of the steps it reads (by step name)."""

    def announce(self, record: StepRecord, notify: Callable[[str, StepRecord], None]) -> None:
        """Tell the listeners that `record`'s step started (the dispatcher released it; its
        `start` comes next). By default at once."""
        notify("started", record)

    def measure(self, record: StepRecord) -> None:  # noqa: B027 (optional hook)
        """Put what the executor measured of a finished step on its record (e.g.
        `peak_mem_gib`), before the reporters hear of it."""

    def collect(self, records: Mapping[str, StepRecord]) -> None:  # noqa: B027 (optional hook)
        """After the dispatch: make each completed record's `result` the step's output
        (by default the futures' results already are)."""


class InProcessExecutor(Executor):
    """Each step is a task of the current flow run, named after the step; its function
    runs with its declared CPUs' native threads, in this process or a process of its own
    (isolation.py).

    Its task run carries only the tags its component declares: Prefect 3 takes a slot of
    a `tag:<tag>` concurrency limit for every tag of a task run (a server round trip per
    tag, about 50 ms), so planflow adds none of its own; the pool a step ran on is in the
    run's artifacts and metrics, the pipeline in its flow run's tags."""

    def __init__(self, pipeline: Pipeline, assignments: Mapping[str, Assignment], params: Mapping[str, Any]) -> None:
        self.pipeline, self.assignments, self.params = pipeline, assignments, params
        self.usage = UsageLog()
        # isolated steps released before the forkserver answered: step -> their start, said later
        self._later: dict[str, Callable[[float], None]] = {}
        if any(pipeline.isolation_of(step) == "process" for step in assignments):
            warm_forkserver()  # beside the steps before the first isolated one

    def announce(self, record: StepRecord, notify: Callable[[str, StepRecord], None]) -> None:
        """An isolated step released before the forkserver answered starts when its task is
        submitted, once it answers (_SubmittedLater), and is said to have started then, its
        `started` moved past that wait: the wait (1.5-7 s) is neither what the history learns
        nor the step's time shown (its log line, the summary, planned versus actual: 2.38 s
        for a 0.1 s step), nor the start the Overrun alert counts from (it fired for a step
        of 0.1 s), nor the calendar's."""
        if self.pipeline.isolation_of(record.step) != "process" or forkserver_is_ready():
            notify("started", record)
            return

        def started_after(waited: float) -> None:
            if record.started is not None:
                record.started += waited
            notify("started", record)

        self._later[record.step] = started_after

    def measure(self, record: StepRecord) -> None:
        self.usage.put_on(record)

    def start(self, step: str, outputs: dict[str, Any]) -> StepFuture:
        started_after = self._later.pop(step, None)  # the forkserver did not answer at its release (announce)
        try:
            component = self.pipeline.steps[step].component
            task = step_task(component, step)
            isolation = self.pipeline.isolation_of(step)
            task.fn = step_function(step, component.fn, component.spec.cpu, isolation, self.usage)
            kwargs = self.pipeline.step_kwargs(step, self.params, outputs)
            run = FlowRunContext.get()
            if isolation == "process" and task.timeout_seconds is not None and run is not None:
                isolated_timeouts.add(str(run.flow_run.id), task.name)  # its child is killed at the timeout
        except BaseException:
            if started_after is not None:  # its start is said before its failure, as any step's is
                started_after(0.0)
            raise
        if started_after is not None:
            return _SubmittedLater(step, lambda: task.submit(**kwargs), started_after, lambda: read_back(task, kwargs))
        return task.submit(**kwargs)


class _SubmittedLater:
    """The future of an isolated step whose task is submitted once the forkserver answers,
    by a thread of its own: its start-up (1.5-7 s) is neither the step's time nor its
    `timeout_seconds`, and the dispatcher releases the round's other steps meanwhile. A
    step its task will read from the cache (a retried run's, `cache="inputs"`) is submitted
    at once: its function, the only part that needs the forkserver, is not called. It
    answers the dispatcher as the task's own future does (`add_done_callback`, `result`,
    `state`)."""

    def __init__(
        self,
        step: str,
        submit: Callable[[], Any],
        started_after: Callable[[float], None],
        cached: Callable[[], bool],
    ) -> None:
        self._lock = threading.Lock()
        self._submitted = threading.Event()
        self._inner: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Any], None]] = []
        context = contextvars.copy_context()  # the flow run's: its task runner, client and settings
        thread = threading.Thread(
            target=context.run,
            args=(self._submit, submit, started_after, cached),
            name=f"planflow-submit-{step}",
            daemon=True,
        )
        thread.start()

    def _submit(
        self, submit: Callable[[], Any], started_after: Callable[[float], None], cached: Callable[[], bool]
    ) -> None:
        began = time.monotonic()
        inner, error = None, None
        try:
            try:
                if not cached():
                    forkserver_ready()
            finally:  # said before its task can end, and before a failure of the wait
                started_after(time.monotonic() - began)
            inner = submit()
        except BaseException as exc:  # noqa: BLE001 - the step's failure, given to the dispatcher by result()
            error = exc
        with self._lock:
            self._inner, self._error = inner, error
            callbacks, self._callbacks = self._callbacks, []
            self._submitted.set()
        for callback in callbacks:
            self._attach(callback)

    def _attach(self, callback: Callable[[Any], None]) -> None:
        if self._inner is None:  # its submission failed: done now
            callback(self)
        else:
            self._inner.add_done_callback(lambda _inner: callback(self))

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        with self._lock:
            if not self._submitted.is_set():
                self._callbacks.append(callback)
                return
        self._attach(callback)

    def result(self) -> Any:
        self._submitted.wait()
        if self._error is not None:
            raise self._error
        return self._inner.result()

    @property
    def state(self) -> Any:
        return getattr(self._inner, "state", None)


WARM_WAIT_SECONDS = 5.0  # the most a warm-up callable holds its thread (it is let go at once)


def warm_task_threads(count: int) -> threading.Thread | None:
    """Start up to `count` of the flow's task-runner threads now, on a thread of its own,
    while the run reads what it needs from the server (run_reads.py): Prefect's
    ThreadPoolTaskRunner starts a thread at each submit while none is idle, and with
    tasks already running each start waited for the interpreter lock (a cProfile of a
    run of 40 trivial components: 33 starts, 0.30 s of the dispatcher's 0.51 s). Each
    started thread is then idle and takes the next step at once. None without a flow
    run's ThreadPoolTaskRunner (nothing to warm). Its private `_executor` is read, not
    changed; a Prefect without it is left as it is."""
    context = FlowRunContext.get()
    runner = getattr(context, "task_runner", None) if context is not None else None
    pool = getattr(runner, "_executor", None)
    if not isinstance(pool, ThreadPoolExecutor) or count <= 0:
        return None
    count = min(count, pool._max_workers)

    def warm() -> None:
        go = threading.Event()  # each callable holds its thread until all are submitted: one thread each
        try:
            waits = [pool.submit(go.wait, WARM_WAIT_SECONDS) for _ in range(count)]
        except RuntimeError:  # the flow ended meanwhile (the pool shut down): nothing to warm
            return
        finally:
            go.set()
        # each thread has run its initializer once its callable ran; a pool already busy with
        # tasks (a pipeline run inside a flow of one's own) may run them late: not waited for
        wait_for(waits, WARM_WAIT_SECONDS)

    thread = threading.Thread(target=warm, name="planflow-warm-threads", daemon=True)
    thread.start()
    return thread


def execute(
    executor: Executor,
    pipeline: Pipeline,
    assignments: Mapping[str, Assignment],
    capacities: Mapping[str, Mapping[str, float]],
    notify: Callable[[str, StepRecord], None],
    admit: Admit | None = None,
) -> dict[str, StepRecord]:
    """Dispatch every step of `pipeline` on `executor`; `notify(event, record)` hears each
    step event; `admit` takes each step's slots shared with other runs. Returns the
    records, results being the steps' outputs."""
    upstream = {name: pipeline.upstream(name) for name in pipeline.steps}

    def measured(event: str, record: StepRecord) -> None:
        if event == "started":
            executor.announce(record, notify)
            return
        if event in ("completed", "failed"):
            executor.measure(record)
        notify(event, record)

    executor.ledger = ResourceLedger(capacities)
    with executor:
        records, _ = dispatch(upstream, assignments, capacities, executor.start, measured, admit, executor.ledger)
    executor.collect(records)
    return records
