"""Caching a component's result across runs: by its code version and its inputs' content.

    >>> @component(cache="inputs", cache_expiry="7d")
    ... def features(transactions: pl.DataFrame, window: int = 7) -> pl.DataFrame: ...

`cache="run"` (the default) reuses a result only within the same flow run (its retry);
`cache="inputs"` reuses it in any run whose inputs hold the same content and whose
function has the same source, until it expires. The key is a Prefect cache policy
(the inputs' content and TASK_SOURCE), so Prefect's engine does the lookup and marks
the task run Cached; `refresh_cache` (planflow's `--refresh`) recomputes.

Inputs are hashed by content (content_digest): a frame read back from storage is the
same data in another memory layout, and a model read back pickles differently from the
fresh one, so cloudpickle (Prefect's fallback) would hash either differently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
import types
from datetime import timedelta
from typing import Any

import numpy as np
import polars as pl
from prefect.cache_policies import TASK_SOURCE, CachePolicy, Inputs
from prefect.utilities.hashing import hash_objects

CACHE_MODES = ("run", "inputs")
DEFAULT_EXPIRY = timedelta(days=7)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(value: Any, key: str = "cache_expiry") -> timedelta:
    """`"7d"`, `"12h"`, `"30m"`, `"45s"`, `"2w"`, a number of seconds or a timedelta."""
    if isinstance(value, timedelta) and value.total_seconds() > 0:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return timedelta(seconds=float(value))
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match and float(match.group(1)) > 0:
        return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    raise ValueError(
        f"{key}={value!r}: must be a duration > 0: a number of seconds or a string like '7d', '12h', "
        f"'30m', '45s', '2w'. Fix: e.g. {key}='7d'"
    )


def cache_problems(values: dict[str, Any]) -> list[str]:
    """Every problem in a component's `cache` and `cache_expiry`; empty when valid."""
    problems = []
    if "cache" in values and values["cache"] not in CACHE_MODES:
        problems.append(
            f"cache={values['cache']!r}: must be 'inputs' (reuse a result across runs while the code and "
            "the inputs are unchanged) or 'run' (within the flow run only, the default). Fix: e.g. cache='inputs'"
        )
    if "cache_expiry" in values:
        try:
            parse_duration(values["cache_expiry"])
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def content_digest(value: Any, _depth: int = 0, _seen: dict[int, tuple[Any, Any]] | None = None) -> Any:
    """`value` as plain JSON-able data that stands for its content: every frame and array
    (also inside lists, tuples, dicts, sets, dataclasses and other objects' pickled state)
    a digest of its content, an object (a fitted scikit-learn model) its type and the
    digest of its state, any other value that JSON cannot hold a hash of its own pickle.
    Pickling a whole model at once did not do: its pickle differs between a fresh model
    and the same model read back (the memo follows which objects are shared), so the step
    after a cached model missed the cache once. An object met again (shared, or a cycle)
    is digested once."""
    if isinstance(value, _JSON_LEAF):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):  # its content once (its reduce would copy it again)
        return ["bytes", hashlib.sha256(value).hexdigest()]
    seen: dict[int, tuple[Any, Any]] = {} if _seen is None else _seen
    known = seen.get(id(value))
    if known is not None:
        return known[1]
    seen[id(value)] = (value, ["cycle"])  # the value itself kept alive: its id is not reused meanwhile
    digest = _digest(value, _depth, seen)
    seen[id(value)] = (value, digest)
    return digest


def _digest(value: Any, _depth: int, seen: dict[int, tuple[Any, Any]]) -> Any:
    kind = type(value)
    if (kind is list or kind is tuple) and _depth <= MAX_DEPTH:  # the common containers first
        return [content_digest(v, _depth + 1, seen) for v in value]
    if kind is dict and _depth <= MAX_DEPTH and all(type(k) is str for k in value):
        return {k: content_digest(v, _depth + 1, seen) for k, v in value.items()}
    if isinstance(value, pl.DataFrame):
        rows = value.hash_rows(seed=0).to_numpy().tobytes()
        return ["polars", str(value.schema), hashlib.sha256(rows).hexdigest()]
    pd = sys.modules.get("pandas")  # optional: a pandas frame exists only if pandas was imported
    if pd is not None and isinstance(value, pd.DataFrame):
        rows = pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes()
        columns = [f"{c}:{d}" for c, d in zip(value.columns, value.dtypes, strict=True)]
        return ["pandas", columns, hashlib.sha256(rows).hexdigest()]
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        data = np.ascontiguousarray(value).tobytes()
        return ["numpy", str(value.dtype), list(value.shape), hashlib.sha256(data).hexdigest()]
    if isinstance(value, np.generic):
        return ["numpy", str(value.dtype), content_digest(value.item(), _depth, seen)]
    if isinstance(value, type):
        return ["type", f"{value.__module__}.{value.__qualname__}"]
    deeper = _depth + 1
    if _depth <= MAX_DEPTH:
        if isinstance(value, np.ndarray):  # of Python objects
            return ["numpy", "object", list(value.shape), [content_digest(v, deeper, seen) for v in value.ravel()]]
        if isinstance(value, dict):
            if all(type(k) is str for k in value):  # JSON's own keys (sorted when hashed)
                return {k: content_digest(v, deeper, seen) for k, v in value.items()}
            pairs = [[content_digest(k, deeper, seen), content_digest(v, deeper, seen)] for k, v in value.items()]
            return ["dict", sorted(pairs, key=repr)]
        if isinstance(value, (list, tuple)):
            return [content_digest(v, deeper, seen) for v in value]
        if isinstance(value, (set, frozenset)):  # in an order of its own: a set's iteration follows the hash seed
            return ["set", sorted((content_digest(v, deeper, seen) for v in value), key=repr)]
        if dataclasses.is_dataclass(value):
            fields = {f.name: content_digest(getattr(value, f.name), deeper, seen) for f in dataclasses.fields(value)}
            return [type(value).__qualname__, fields]
        state = _state(value)
        if state is not None:
            kind = type(value)
            return [f"{kind.__module__}.{kind.__qualname__}", content_digest(state, deeper, seen)]
    return ["pickled", hash_objects(value, raise_on_failure=True)]  # a function, a lock (refused), ...


MAX_DEPTH = 32  # objects nested deeper than this are hashed by their own pickle
_JSON_LEAF = (str, int, float, bool, type(None))


def _state(value: Any) -> Any:
    """What pickle saves of `value` besides its type, as pickle itself asks for it
    (`__reduce_ex__(4)`: a class's own `__reduce__` first, else its `__getstate__`): the
    reconstructor's name, its arguments, its state and its list and dict items; None when
    it is saved by name (a singleton) or refuses (then its own pickle is hashed)."""
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType)):
        return None
    try:
        reduced = value.__reduce_ex__(4)
        if not isinstance(reduced, tuple) or len(reduced) < 2:
            return None
        rebuild, arguments = reduced[0], tuple(a for a in reduced[1] if a is not type(value))
        state = reduced[2] if len(reduced) > 2 else None
        items = list(reduced[3]) if len(reduced) > 3 and reduced[3] is not None else None
        pairs = list(reduced[4]) if len(reduced) > 4 and reduced[4] is not None else None
    except Exception:  # noqa: BLE001 - an object that refuses: its own pickle decides
        return None
    name = f"{getattr(rebuild, '__module__', '')}.{getattr(rebuild, '__qualname__', repr(rebuild))}"
    return [name, list(arguments), state, items, pairs]


@dataclasses.dataclass
class ContentInputs(Inputs):
    """Prefect's INPUTS policy, hashing frames and arrays by their content."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any):
        kept = {k: content_digest(v) for k, v in (inputs or {}).items() if k not in (self.exclude or [])}
        return hash_objects(kept, raise_on_failure=True) if kept else None


@dataclasses.dataclass
class ContentAndSource(CachePolicy):
    """ContentInputs and TASK_SOURCE in one key, as Prefect's compound of them would be.
    Not `ContentInputs() + TASK_SOURCE`: Prefect's CompoundCachePolicy folds every Inputs
    policy, subclasses too, into a plain `Inputs`, so frames, arrays and models were
    hashed by their pickle after all."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any):
        keys = [
            key
            for policy in (TASK_SOURCE, ContentInputs())
            if (key := policy.compute_key(task_ctx=task_ctx, inputs=inputs, flow_parameters=flow_parameters, **kwargs))
            is not None
        ]
        return hash_objects(*keys, raise_on_failure=True) if keys else None


def inputs_policy() -> CachePolicy:
    """The key of `cache="inputs"`: the inputs' content and the function's source."""
    return ContentAndSource()


@dataclasses.dataclass
class RunScoped(CachePolicy):
    """The key of `cache="run"`: a result is reused within the same flow run only.

    A retry of a flow run keeps its id, so finished steps are read back rather than
    recomputed; a new run (even with the same parameters) computes afresh. The key
    names the flow run (`planflow-<flow run id>-<step>-<code>`), which is how
    `planflow results gc` knows whose result it is.
    """

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any):
        task_run = getattr(task_ctx, "task_run", None)
        if task_run is None or task_run.flow_run_id is None:
            return None
        task = task_ctx.task
        code = hashlib.sha256((task.source_code or task.fn.__qualname__).encode()).hexdigest()[:16]
        return f"planflow-{task_run.flow_run_id}-{task.name}-{code}"


def task_cache_options(mode: str | None, expiry: Any = None) -> dict[str, Any]:
    """The Prefect task options of a cache mode (None: the default, "run")."""
    if mode == "inputs":
        return {"cache_policy": inputs_policy(), "cache_expiration": parse_duration(expiry or DEFAULT_EXPIRY)}
    return {"cache_policy": RunScoped(), "cache_expiration": None}
