"""Caching across runs, seen from a run: which steps will be read from the cache (so the
plan gives them almost no time), `--refresh`, and which finished steps were Cached.

A step declared with `cache="inputs"` (core/caching.py) is predicted cached when its
upstream steps are, and a live (not expired) result is stored under the key Prefect
will compute for it: the same policy, applied to the same inputs (its upstream steps'
cached outputs, read back, and the run's parameters).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import FlowRunContext
from prefect.results import get_result_store
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings
from prefect.utilities.callables import get_call_parameters

from planflow.core.pipeline import Pipeline
from planflow.prefect.serializer import PlanflowSerializer
from planflow.runtime.dispatch import StepRecord
from planflow.runtime.history import Estimate

CACHED_SECONDS = 0.05  # what the plan gives a step read from the cache: reading it back
CACHED_SOURCE = "cached (inputs and code unchanged)"
CACHED_STATE = "Cached"
_log = logging.getLogger("planflow.caching")


def result_serializer() -> PlanflowSerializer:
    """The serializer planflow's flows write results with (prefect/serializer.py)."""
    return PlanflowSerializer()


def cache_key(component: Any, kwargs: Mapping[str, Any]) -> str | None:
    """The key Prefect's engine computes for `component` called with `kwargs`."""
    policy = component.cache_policy
    if getattr(component, "cache_mode", None) != "inputs" or policy is None:
        return None
    inputs = get_call_parameters(component.fn, (), dict(kwargs))
    return policy.compute_key(task_ctx=SimpleNamespace(task=component), inputs=inputs, flow_parameters={})


def predicted_cached(pipeline: Pipeline, params: Mapping[str, Any] | None = None) -> set[str]:
    """The steps a run of `pipeline` with `params` will read from the cache."""
    if not any(getattr(s.component, "cache_mode", None) == "inputs" for s in pipeline.steps.values()):
        return set()
    try:
        resolved = pipeline.resolve_params(params, require=False)  # a plan without a required one: none predicted by it
        store = get_result_store()
    except Exception as exc:  # a plan never fails for want of a prediction
        _log.warning("cannot predict cached steps of %s: %s", pipeline.name, exc)
        return set()
    cached: set[str] = set()
    outputs: dict[str, Any] = {}
    for name in pipeline.topological_order():
        step = pipeline.steps[name]
        if not all(up in cached for up in pipeline.upstream(name)):
            continue
        try:
            key = cache_key(step.component, pipeline.step_kwargs(name, resolved, _Lazy(store, outputs)))
            if key and store.exists(key):
                cached.add(name)
                outputs[name] = key
        except Exception as exc:  # an input that cannot be hashed or read: not predicted
            _log.debug("step %s of %s not predicted cached: %s", name, pipeline.name, exc)
    return cached


def read_back(task: Any, kwargs: Mapping[str, Any]) -> bool:
    """Whether Prefect's engine, running `task` with `kwargs` in the current flow run, will
    read its result back instead of calling its function: the key its cache policy gives
    (computed as the engine does) names a live result in the run's result store, and the
    cache is not being refreshed. False when that cannot be told (any error): the caller
    then prepares for a call (an isolated step waits for the forkserver, executors.py).
    Reads the stored record (Prefect's `exists`): call it off the dispatcher's thread."""
    refresh = task.refresh_cache if task.refresh_cache is not None else PREFECT_TASKS_REFRESH_CACHE.value()
    run = FlowRunContext.get()
    if refresh or run is None or not isinstance(task.cache_policy, CachePolicy):
        return False
    try:
        ctx = SimpleNamespace(task=task, task_run=SimpleNamespace(flow_run_id=run.flow_run.id, id=None))
        inputs = get_call_parameters(task.fn, (), dict(kwargs))
        key = task.cache_policy.compute_key(task_ctx=ctx, inputs=inputs, flow_parameters=run.parameters or {})
        return bool(key) and get_result_store().update_for_task(task, _sync=True).exists(key)
    except Exception as exc:  # noqa: BLE001 - not known: the step is prepared for as a call
        _log.debug("cannot tell whether %s will be read from the cache: %s", task.name, exc)
        return False


class _Lazy(dict):
    """Upstream outputs read back from the result store only when a step needs them."""

    def __init__(self, store: Any, keys: dict[str, Any]) -> None:
        super().__init__()
        self.store, self.keys = store, keys

    def __getitem__(self, step: str) -> Any:
        if not dict.__contains__(self, step):
            self[step] = self.store.read(self.keys[step]).result
        return dict.__getitem__(self, step)


def cached_estimate() -> Estimate:
    return Estimate(seconds=CACHED_SECONDS, source=CACHED_SOURCE)


@contextmanager
def refreshing(refresh: bool) -> Iterator[None]:
    """Within it, every task recomputes and overwrites its cached result (`--refresh`).
    Task runs submitted inside it inherit the setting (the task runner copies the context)."""
    with temporary_settings(updates={PREFECT_TASKS_REFRESH_CACHE: True}) if refresh else nullcontext():
        yield


def step_state(record: StepRecord) -> str:
    """A record's state as a run reports it: Cached for a completed step read from the cache."""
    return CACHED_STATE if record.state == "Completed" and getattr(record, "cached", False) else record.state
