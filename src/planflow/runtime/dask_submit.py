"""Submitting a step's Prefect task to the Dask cluster at what a plain task costs, or less.

prefect-dask 0.3.7 (PrefectDaskClient.submit) does this per task on the submitting thread:
serialize the whole Prefect context (the flow run context with its flow - for a planflow
run the pipeline and all its components - and every setting), then, with no key given,
tokenize the function and all its arguments (dask pickles them to hash them), then
pickle them again to send. Measured on a run of 40 trivial components: 0.2 s per step,
longer than the step runs on a worker, so the dispatcher released steps more slowly
than the cluster ran them.

RunSubmitter does what PrefectDaskClient.submit does, with:
- the context serialized and pickled once per run (what it carries does not change
  while the dispatcher releases the run's steps), sent as bytes; only each task's
  asset context (its task run id and inputs) is made per step;
- a key of its own (`<step>-<task run id>`), so nothing is tokenized.

On the worker, `run_task` unpickles the context once per run and worker process
(`_unpickled`, kept for the last RUNS_KEPT runs) and runs the task with Prefect's own
engine (run_task_sync / run_task_async) in it, returning its final state, as prefect-dask
does. The context holds the run's flow, and with it the pipeline and all its components:
25 KB pickled for 40 trivial components, 213 KB for 400, 4.8 ms to unpickle; unpickled
for each step, a run of 400 spent 2 s of the workers' CPU on it, a cost per step that
grew with the pipeline. (Not a Dask task of its own that the steps depend on: Dask runs a
task only where its inputs are, and every root step went to the one worker holding it.)
Written against prefect-dask 0.3.7 and prefect 3.8.8 (pinned in constraints.txt).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from uuid import UUID, uuid4

import cloudpickle
import distributed
from prefect.context import AssetContext, serialize_context
from prefect.task_engine import run_task_async, run_task_sync
from prefect.tasks import Task
from prefect.utilities.engine import collect_task_run_inputs_sync

FORGET_SECONDS = 5.0  # the longest a run's end waits for its workers to drop its context
RUNS_KEPT = 8  # the contexts a worker process keeps unpickled: runs at once on a cluster
_UNPICKLED: OrderedDict[str, _Context] = OrderedDict()
_UNPICKLED_LOCK = threading.Lock()


class _Context:
    """One run's context in a worker process: unpickled once, by its first step (the
    others of the run wait for it, on its own lock: another run's steps do not)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value: dict[str, Any] | None = None


def _unpickled(run: str, context: bytes) -> dict[str, Any]:
    """Run `run`'s context (`context` pickled), unpickled once in this process (the steps
    of a run on one worker share it: read, never changed). The first step of a run
    unpickles it (which may import the pipeline's modules: seconds, on a new worker) while
    its run's other first steps wait; the steps of other runs go on."""
    with _UNPICKLED_LOCK:
        found = _UNPICKLED.get(run)
        if found is None:
            found = _UNPICKLED[run] = _Context()
            while len(_UNPICKLED) > RUNS_KEPT:
                _UNPICKLED.popitem(last=False)
        else:
            _UNPICKLED.move_to_end(run)
    with found.lock:
        if found.value is None:
            found.value = cloudpickle.loads(context)
        return found.value


def forget(run: str) -> None:
    """Drop run `run`'s context from this worker process (the run ended: its flow, its
    pipeline and its parameters no longer held)."""
    with _UNPICKLED_LOCK:
        _UNPICKLED.pop(run, None)


def run_task(task: Task, run: str, context: bytes, asset_context: dict[str, Any], **kwargs: Any) -> Any:
    """Runs on a worker: the task's Prefect engine in the context of run `run` (a key of
    the submitter's: `context`, pickled); its final state."""
    hydrated = _unpickled(run, context)
    if asset_context:
        hydrated = {**hydrated, "asset_context": asset_context}
    if task.isasync:
        return asyncio.run(run_task_async(task=task, context=hydrated, **kwargs))
    return run_task_sync(task=task, context=hydrated, **kwargs)


class RunSubmitter:
    """Submits one run's steps: the Prefect context pickled once (`__init__`, on the
    dispatcher's thread inside the flow run), each step's task with its own key."""

    def __init__(self, client: distributed.Client) -> None:
        self.client = client
        self.context = cloudpickle.dumps(serialize_context())
        self.run = str(uuid4())  # the workers' key to it, unpickled (_unpickled)

    def close(self) -> None:
        """The run ended: each worker drops its context (a round trip to the workers, waited
        for at most FORGET_SECONDS, distributed's own bound on a call: the run's client
        closes next, and a message not sent by then was lost). TimeoutError when the workers
        did not answer in time or the call failed; they drop it later anyway, among their
        oldest RUNS_KEPT."""
        try:
            self.client.run(forget, self.run, on_error="ignore", callback_timeout=FORGET_SECONDS)
        except Exception as exc:  # noqa: BLE001 - said by the caller, with why
            why = f"no answer within {FORGET_SECONDS:g} s" if isinstance(exc, TimeoutError) else f"{exc}"
            raise TimeoutError(f"the Dask workers were not told to drop run {self.run}'s context: {why}") from exc

    def submit(self, step: str, task: Task, parameters: Mapping[str, Any]) -> tuple[distributed.Future, UUID]:
        """`task` called with `parameters` (upstream outputs as Dask futures) on the
        cluster, with the Dask annotations in force (resources): (the future of its final
        state, its task run id)."""
        task_run_id = uuid4()
        dependencies = {
            name: collect_task_run_inputs_sync(value, future_cls=distributed.Future)
            for name, value in parameters.items()
        }
        asset_context = AssetContext.from_task_and_inputs(
            task=task, task_run_id=task_run_id, task_inputs=dependencies, copy_to_child_ctx=True
        ).serialize()
        future = self.client.submit(
            run_task,
            key=f"{step}-{task_run_id}",
            task=task,
            run=self.run,
            context=self.context,
            asset_context=asset_context,
            task_run_id=task_run_id,
            parameters=dict(parameters),
            wait_for=None,
            dependencies=dependencies,
            return_type="state",
        )
        return future, task_run_id
