"""Dask mode: each component is a Prefect task on a Dask cluster (prefect-dask).

The run plans, takes its shared slots and records as in-process runs do (the same
dispatcher, `execute`); only where a released step runs differs. DaskExecutor submits it
through prefect-dask's DaskTaskRunner connected to the scheduler's address, annotated
with its planned pool's demand as Dask worker resources (dask_cluster.py), so that the
cluster itself keeps every worker within what it offers.

A step's outputs stay on the worker that made them: the next step gets the Dask future
and the data moves worker to worker; the dispatcher receives a small DaskOutput (the
future, the output's key metrics, computed where the data is, and how long the step ran
on its worker). A step whose workers died more often than the scheduler allows fails
with DaskWorkerLost, naming that fate.

How long a step ran is the Dask worker's compute time of its task (the Prefect task run
on the worker, engine and result persistence included: what a task costs in-process
too), not release to completion as the dispatcher sees it: the dispatcher releases every
ready step before it listens, and a step waiting in the cluster's queue is not running.
After Prefect's retries (a component's `retries`) it is the last attempt's time, as in
process: the earlier attempts and the retry delays are not the component's duration.
That is what the history learns (reporters.HistoryReporter reads `StepRecord.ran_seconds`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dask
import distributed
from distributed.scheduler import KilledWorker
from prefect.context import TaskRunContext
from prefect_dask import DaskTaskRunner

from planflow.core.pipeline import Pipeline
from planflow.prefect.run_logger import run_logger
from planflow.runtime import reporting
from planflow.runtime.dask_cluster import scheduler_address, started_by_planflow, task_resources, unreachable
from planflow.runtime.dask_submit import RunSubmitter
from planflow.runtime.dispatch import Assignment, StepRecord
from planflow.runtime.executors import Executor, StepFuture
from planflow.runtime.tags import step_task
from planflow.settings import settings

logger = logging.getLogger("planflow.dask")
OUTCOME_PRIORITY = 100  # Dask runs higher first; steps are submitted at 0


class DaskWorkerLost(RuntimeError):
    """The Dask workers running a step died (more often than the scheduler allows)."""


class DaskTaskRefused(RuntimeError):
    """The Dask scheduler failed a step's task before any worker ran it (e.g. it could not
    unpickle it: the scheduler lacks the project's code)."""


PREFECT_DASK_LOGGER = logging.getLogger("prefect.task_runner.dask")


class _NoDashboardLine(logging.Filter):
    """Drops prefect-dask's 'The Dask dashboard is available at ...': planflow's local
    cluster runs without one (Dask reports its HTTP server as the dashboard all the same)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("The Dask dashboard is available")


@dataclass(frozen=True)
class DaskOutput:
    """A completed step's output as the dispatcher holds it: its Prefect future on the
    cluster (the data stays there) and the key metrics of the output."""

    step: str
    future: Any
    metrics: dict[str, float]
    seconds: float | None = None  # its task's compute time on the worker (None: not known)
    attempts: int = 1  # its task's attempts (Prefect's retries)
    last_attempt_seconds: float | None = None  # after retries: how long the last one took

    def key_metrics(self) -> dict[str, float]:
        return dict(self.metrics)


# On a worker: per task run, (the attempts its function made, the last one's seconds),
# until the step's outcome takes them (_outcome runs where the task ran).
_ATTEMPTS: dict[str, tuple[int, float]] = {}


def _attempted(began: float) -> None:
    """On a worker: an attempt of the current task run's function ended."""
    context = TaskRunContext.get()
    if context is not None:
        key = str(context.task_run.id)
        _ATTEMPTS[key] = (_ATTEMPTS.get(key, (0, 0.0))[0] + 1, time.perf_counter() - began)


def timed_attempts(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` timing each of its attempts on the worker (functools.wraps: Prefect reads the
    original's signature, and the cache key the original's source)."""
    if inspect.iscoroutinefunction(fn):

        async def run_async(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                _attempted(began)

        return functools.wraps(fn)(run_async)

    def run(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _attempted(began)

    return functools.wraps(fn)(run)


def _ran_seconds(key: str) -> float | None:
    """On a worker: the compute time of task `key` there (None when another worker ran
    it, e.g. its output was moved here)."""
    try:
        task = distributed.get_worker().state.tasks.get(key)
    except ValueError:  # not on a worker
        return None
    spans = [s["stop"] - s["start"] for s in getattr(task, "startstops", ()) if s.get("action") == "compute"]
    return spans[-1] if spans else None


def _outcome(state: Any, key: str) -> tuple[bool, Any]:
    """Runs on a worker holding the step's final state (Dask runs it where that is):
    (True, (key metrics, seconds it ran, attempts, the last attempt's seconds)) or (False,
    the step's error), all small, so no output travels to the dispatcher."""
    attempts, last = _ATTEMPTS.pop(str(state.state_details.task_run_id), (1, None))
    if state.is_completed():
        return True, (reporting.key_metrics(state.result()), _ran_seconds(key), attempts, last, state.name)
    try:
        state.result()
    except BaseException as exc:  # the step's own error, returned as a value
        return False, exc
    return False, RuntimeError(f"ended {state.name}: {state.message or 'no message'}")


@dataclass(frozen=True)
class _StateName:
    name: str


class DaskStep:
    """The dispatcher's future for one step on the cluster."""

    def __init__(self, step: str, future: Any, outcome: distributed.Future) -> None:
        self.step, self.future, self.outcome = step, future, outcome
        self.state: _StateName | None = None  # once completed: its final state's name (Cached, Completed)

    def add_done_callback(self, fn: Any) -> None:
        self.outcome.add_done_callback(lambda _: fn(self))

    def result(self) -> DaskOutput:
        try:
            ok, value = self.outcome.result()
        except distributed.client.FutureCancelledError as exc:
            refused = self._refused()
            if refused is not None:
                raise refused from exc
            raise DaskWorkerLost(f"step '{self.step}' was cancelled on the Dask cluster: {exc}") from exc
        except KilledWorker as exc:
            raise DaskWorkerLost(
                f"the Dask worker(s) running step '{self.step}' died ({exc}). Fix: read why in the workers' "
                "logs (`.planflow/dask/<worker>.log` for the workers `planflow dask up` started), e.g. out of memory"
            ) from exc
        if not ok:
            raise value
        metrics, seconds, attempts, last, state_name = value
        self.state = _StateName(state_name)  # what the dispatcher reads of an in-process task's final state
        return DaskOutput(self.step, self.future, metrics, seconds, attempts, last)

    def _refused(self) -> DaskTaskRefused | None:
        """Why the scheduler failed the step's own task, when it did: its outcome is then
        only 'cancelled: lost dependencies', which named no cause."""
        if getattr(self.future, "status", None) != "error":
            return None
        try:
            error = self.future.exception(timeout=5)
        except Exception as exc:  # noqa: BLE001 - the cause is only a better message
            error = exc
        fix = ""
        if "deserializ" in str(error):
            fix = (
                " Fix: the scheduler needs the project's code and planflow as the workers do (the same "
                "environment): start it from the project's folder or with PYTHONPATH naming it; its log names "
                "the module it lacks"
            )
        said = " ".join(str(error).split("For more information")[0].split())  # Dask's wrapped lines
        return DaskTaskRefused(
            f"the Dask scheduler failed step '{self.step}' before any worker ran it: "
            f"{type(error).__name__}: {said.rstrip('.')}.{fix}"
        )


class DaskExecutor(Executor):
    """Each released step is a Prefect task submitted through prefect-dask to the Dask
    scheduler at `address`, with its planned pool's demand as worker resources."""

    def __init__(
        self,
        pipeline: Pipeline,
        assignments: Mapping[str, Assignment],
        params: Mapping[str, Any],
        address: str | None = None,
    ) -> None:
        self.pipeline, self.assignments, self.params = pipeline, assignments, params
        self.address = address
        self._runner: DaskTaskRunner | None = None
        self._submitter: RunSubmitter | None = None
        self._steps: dict[str, str] = {}  # a step's Dask key -> the step (_on_cluster_event)
        self._log = run_logger("planflow.dask")

    def __enter__(self) -> DaskExecutor:
        address = self.address or scheduler_address()
        timeout = settings().dask_connect_seconds
        runner = DaskTaskRunner(address=address, client_kwargs={"timeout": timeout})
        runner.__enter__()
        quiet = _NoDashboardLine() if started_by_planflow(address) else None
        if quiet:  # prefect-dask names a dashboard link that the scheduler always reports
            PREFECT_DASK_LOGGER.addFilter(quiet)
        try:
            runner.client  # noqa: B018 (connects now: a scheduler that does not answer fails before any step)
        except (OSError, TimeoutError) as exc:
            runner.__exit__(None, None, None)
            raise unreachable(address, timeout, exc) from None
        finally:
            if quiet:
                PREFECT_DASK_LOGGER.removeFilter(quiet)
        self._runner = runner
        self._submitter = RunSubmitter(runner.client)
        runner.client.subscribe_topic("all", self._on_cluster_event)
        return self

    def _on_cluster_event(self, event: tuple[float, Any]) -> None:
        """A worker left the cluster unexpectedly (killed, out of memory, its machine gone):
        said in the run's log, naming the run's steps it was running, which Dask runs again
        on another worker. The run went on in silence before: only the workers' logs told."""
        _, message = event
        if not isinstance(message, dict) or message.get("action") != "remove-worker" or message.get("expected"):
            return
        steps = sorted({self._steps[key] for key in message.get("processing-tasks") or () if key in self._steps})
        running = f" while running step(s) {', '.join(steps)}, which Dask runs again on another worker" if steps else ""
        self._log.warning(
            "Dask worker %s left the cluster unexpectedly%s (a step whose workers die more often than "
            "distributed.scheduler.allowed-failures fails the run). Why: the worker's log "
            "(`.planflow/dask/<worker>.log` for the workers `planflow dask up` started; `planflow dask status` "
            "names a worker that did not come back)",
            message.get("worker", "?"),
            running,
        )

    def __exit__(self, *exc_info: Any) -> None:
        submitter, self._submitter = self._submitter, None
        if submitter is not None:
            try:
                submitter.close()
            except Exception as exc:  # noqa: BLE001 - the workers drop it among their oldest anyway
                logger.warning("%s (they drop it later, among their oldest)", exc)
        if self._runner is not None:
            try:
                self._runner.client.unsubscribe_topic("all")
            except Exception as exc:  # noqa: BLE001 - the connection may be gone; the client closes next
                logger.debug("unsubscribe: %s", exc)
            self._runner.__exit__(*exc_info)
            self._runner = None

    def measure(self, record: StepRecord) -> None:
        """The worker's compute time, never above release to completion: Dask times it by
        the wall clock, which a clock step (NTP, a resumed VM) moves, and the history must
        not learn that step; the dispatcher's clock is monotonic. After retries, the last
        attempt's time (the attempts counted in the run's summary)."""
        output = record.result
        if not isinstance(output, DaskOutput):
            return
        ran = output.seconds
        if output.attempts > 1:
            record.attempts = output.attempts
            ran = output.last_attempt_seconds if output.last_attempt_seconds is not None else ran
        if ran:
            seen = record.seconds
            record.ran_seconds = ran if seen is None else min(ran, seen)

    def start(self, step: str, outputs: dict[str, Any]) -> StepFuture:
        assert self._runner is not None and self._submitter is not None, "use DaskExecutor as a context manager"
        a = self.assignments[step]
        component = self.pipeline.steps[step].component
        task = step_task(component, step)
        task.fn = timed_attempts(component.fn)
        upstream = {name: out.future if isinstance(out, DaskOutput) else out for name, out in outputs.items()}
        kwargs = self.pipeline.step_kwargs(step, self.params, upstream)
        with dask.annotate(resources=task_resources(a.pool, a.demand)):
            future, task_run_id = self._submitter.submit(step, task, kwargs)
        self._steps[str(future.key)] = step
        # first among the tasks ready on its worker: at the default priority it would queue
        # behind every step released after its own (Dask runs earlier submissions first),
        # and the dispatcher would hear of completions only in bursts, late
        outcome = self._runner.client.submit(
            _outcome, future, future.key, key=f"outcome-{task_run_id}", priority=OUTCOME_PRIORITY
        )
        return DaskStep(step, future, outcome)
