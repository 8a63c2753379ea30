"""Dask mode: each component is a Prefect task on a Dask cluster (prefect-dask).

The run plans, takes its shared slots and records as in-process runs do (the same
dispatcher, `execute`); only where a released step runs differs. DaskExecutor submits it
through prefect-dask's DaskTaskRunner connected to the scheduler's address, annotated
with its planned pool's demand as Dask worker resources (dask_cluster.py), so that the
cluster itself keeps every worker within what it offers.

A step's outputs stay on the worker that made them: the next step gets the Dask future
and the data moves worker to worker; the dispatcher receives a small DaskOutput (the
future and the output's key metrics, computed where the data is). A step whose workers
died more often than the scheduler allows fails with DaskWorkerLost, naming that fate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask
import distributed
from distributed.scheduler import KilledWorker
from prefect_dask import DaskTaskRunner

from planflow.core.pipeline import Pipeline
from planflow.runtime import reporting
from planflow.runtime.dask_cluster import scheduler_address, task_resources, unreachable
from planflow.runtime.dispatch import Assignment
from planflow.runtime.executors import Executor, StepFuture
from planflow.runtime.tags import PLANFLOW_TAG
from planflow.settings import settings


class DaskWorkerLost(RuntimeError):
    """The Dask workers running a step died (more often than the scheduler allows)."""


@dataclass(frozen=True)
class DaskOutput:
    """A completed step's output as the dispatcher holds it: its Prefect future on the
    cluster (the data stays there) and the key metrics of the output."""

    step: str
    future: Any
    metrics: dict[str, float]

    def key_metrics(self) -> dict[str, float]:
        return dict(self.metrics)


def _outcome(state: Any) -> tuple[bool, Any]:
    """Runs on a worker holding the step's final state: (True, key metrics) or (False,
    the step's error), both small, so no output travels to the dispatcher."""
    if state.is_completed():
        return True, reporting.key_metrics(state.result())
    try:
        state.result()
    except BaseException as exc:  # the step's own error, returned as a value
        return False, exc
    return False, RuntimeError(f"ended {state.name}: {state.message or 'no message'}")


class DaskStep:
    """The dispatcher's future for one step on the cluster."""

    def __init__(self, step: str, future: Any, outcome: distributed.Future) -> None:
        self.step, self.future, self.outcome = step, future, outcome

    def add_done_callback(self, fn: Any) -> None:
        self.outcome.add_done_callback(lambda _: fn(self))

    def result(self) -> DaskOutput:
        try:
            ok, value = self.outcome.result()
        except distributed.client.FutureCancelledError as exc:
            raise DaskWorkerLost(f"step '{self.step}' was cancelled on the Dask cluster: {exc}") from exc
        except KilledWorker as exc:
            raise DaskWorkerLost(
                f"the Dask worker(s) running step '{self.step}' died ({exc}). Fix: read why in the workers' "
                "logs (`.planflow/dask/<worker>.log` for the workers `planflow dask up` started), e.g. out of memory"
            ) from exc
        if not ok:
            raise value
        return DaskOutput(self.step, self.future, value)


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

    def __enter__(self) -> DaskExecutor:
        address = self.address or scheduler_address()
        timeout = settings().dask_connect_seconds
        runner = DaskTaskRunner(address=address, client_kwargs={"timeout": timeout})
        runner.__enter__()
        try:
            runner.client  # noqa: B018 (connects now: a scheduler that does not answer fails before any step)
        except (OSError, TimeoutError) as exc:
            runner.__exit__(None, None, None)
            raise unreachable(address, timeout, exc) from None
        self._runner = runner
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._runner is not None:
            self._runner.__exit__(*exc_info)
            self._runner = None

    def start(self, step: str, outputs: dict[str, Any]) -> StepFuture:
        assert self._runner is not None, "use DaskExecutor as a context manager"
        a = self.assignments[step]
        component = self.pipeline.steps[step].component
        task = component.with_options(name=step, task_run_name=step)
        # only the tags its author gave it: every task-run tag costs a concurrency slot
        # round trip in Prefect 3 (executors.InProcessExecutor); the flow run says `planflow`
        task.tags = set(component.tags) - {PLANFLOW_TAG}
        upstream = {name: out.future if isinstance(out, DaskOutput) else out for name, out in outputs.items()}
        kwargs = self.pipeline.step_kwargs(step, self.params, upstream)
        with dask.annotate(resources=task_resources(a.pool, a.demand)):
            future = self._runner.submit(task, kwargs)
        outcome = self._runner.client.submit(_outcome, future.wrapped_future, key=f"outcome-{future.task_run_id}")
        return DaskStep(step, future, outcome)
