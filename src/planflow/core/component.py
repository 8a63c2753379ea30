"""`@component`: a Prefect task that declares the resources it needs.

    >>> @component(cpu=2, mem_gib=4, est_seconds=30)
    ... def train(features: pl.DataFrame, seed: int = 7) -> Model: ...

A parameter that changes the work is declared with the value the estimate holds at:
`@component(est_seconds=30, scales_with={"n_rows": 100_000})` plans a run with
`n_rows=200_000` at 60 s (durations learned from earlier runs scale the same way).

`@component(cache="inputs", cache_expiry="7d")` reuses a result across runs while the
function's source and its inputs' content are unchanged (core/caching.py).

The spec is checked when the decorator is applied, and every problem is listed
at once, so a bad spec fails at import with the fix beside each value.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from prefect.tasks import Task

from planflow.core.caching import cache_problems, task_cache_options

RESOURCE_KEYS = (
    "cpu",
    "gpu",
    "mem_gib",
    "est_seconds",
    "pools",
    "est_seconds_by_pool",
    "scales_with",
    "isolation",
)
# Where an in-process component runs: a thread of the flow's process, or a process of its
# own (runtime/isolation.py). None on a component: the pipeline's default, else "thread".
ISOLATION_CHOICES = ("thread", "process")
TASK_KEYS = ("name", "description", "retries", "retry_delay_seconds", "timeout_seconds", "tags")
CACHE_KEYS = ("cache", "cache_expiry")
ALLOWED_KEYS = RESOURCE_KEYS + TASK_KEYS + CACHE_KEYS
# Names users reach for first, mapped to the key planflow uses.
KEY_ALIASES = {
    "memory": "mem_gib",
    "mem": "mem_gib",
    "ram": "mem_gib",
    "memory_gib": "mem_gib",
    "cpus": "cpu",
    "cores": "cpu",
    "gpus": "gpu",
    "pool": "pools",
    "duration": "est_seconds",
    "seconds": "est_seconds",
    "estimate": "est_seconds",
    "scale_with": "scales_with",
    "work_params": "scales_with",
    "scales_by": "scales_with",
    "isolate": "isolation",
}


class ComponentSpecError(ValueError):
    """A component's declaration is invalid; the message lists every problem. `function`:
    the declared function's name, when known."""

    function: str | None = None


@dataclass(frozen=True)
class ResourceSpec:
    """What one run of a component needs: cores, GPUs, memory, and how long it takes.

    `pools` limits where it may run (empty: any pool); `est_seconds_by_pool`
    gives a different duration on some pools (a GPU pool trains faster).
    `scales_with` maps parameters that change the work (e.g. `n_rows`) to the value
    at which the estimate holds; the duration is taken as proportional to each.
    """

    cpu: float = 1.0
    gpu: int = 0
    mem_gib: float = 1.0
    est_seconds: float = 10.0
    pools: tuple[str, ...] = ()
    est_seconds_by_pool: Mapping[str, float] = field(default_factory=dict)
    scales_with: Mapping[str, float] = field(default_factory=dict)
    isolation: str | None = None

    def demand(self) -> dict[str, float]:
        return {"cpu": float(self.cpu), "gpu": float(self.gpu), "mem_gib": float(self.mem_gib)}

    def seconds_on(self, pool: str) -> float:
        return float(self.est_seconds_by_pool.get(pool, self.est_seconds))

    def allows(self, pool: str) -> bool:
        return not self.pools or pool in self.pools

    def work_factor(self, work: Mapping[str, Any]) -> float:
        """How much more work than at the declared reference values `work` is: the
        product of value / reference over `scales_with` (0 for a value of 0: no work; a
        value missing from `work`, or not a number >= 0, counts as the reference, and
        Pipeline.resolve_params refuses a run's negative one)."""
        factor = 1.0
        for name, reference in self.scales_with.items():
            value = work.get(name)
            if _is_number(value) and value >= 0:
                factor *= float(value) / reference
        return factor

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu": self.cpu,
            "gpu": self.gpu,
            "mem_gib": self.mem_gib,
            "est_seconds": self.est_seconds,
            "pools": list(self.pools),
            "est_seconds_by_pool": dict(self.est_seconds_by_pool),
            "scales_with": dict(self.scales_with),
            "isolation": self.isolation,
        }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(key: str, value: Any, unit: str, example: str) -> list[str]:
    if not _is_number(value) or value <= 0:
        return [f"{key}={value!r}: must be a number > 0 ({unit}). Fix: e.g. {key}={example}"]
    return []


def spec_problems(values: Mapping[str, Any]) -> list[str]:
    """Every problem in a resource declaration; empty when it is valid."""
    problems: list[str] = []
    for key in values:
        if key not in ALLOWED_KEYS:
            close = [KEY_ALIASES[key]] if key in KEY_ALIASES else difflib.get_close_matches(key, ALLOWED_KEYS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(f"unknown key '{key}'.{hint} Allowed keys: {', '.join(ALLOWED_KEYS)}")
    if "cpu" in values:
        problems += _positive("cpu", values["cpu"], "cores; fractions allowed", "1 or 0.5")
    if "mem_gib" in values:
        problems += _positive("mem_gib", values["mem_gib"], "GiB of memory", "2")
    if "est_seconds" in values:
        problems += _positive("est_seconds", values["est_seconds"], "expected seconds per run", "30")
    if "gpu" in values:
        gpu = values["gpu"]
        if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
            problems.append(
                f"gpu={gpu!r}: must be a whole number >= 0 (GPUs are not shared between "
                "components). Fix: e.g. gpu=0 or gpu=1"
            )
    if "pools" in values:
        pools = values["pools"]
        if (
            isinstance(pools, str)
            or not isinstance(pools, (list, tuple))
            or not all(isinstance(p, str) and p for p in pools)
        ):
            problems.append(f"pools={pools!r}: must be a list of pool names. Fix: e.g. pools=['local']")
    if "est_seconds_by_pool" in values:
        by_pool = values["est_seconds_by_pool"]
        if not isinstance(by_pool, Mapping) or not all(
            isinstance(k, str) and _is_number(v) and v > 0 for k, v in by_pool.items()
        ):
            problems.append(
                f"est_seconds_by_pool={by_pool!r}: must map pool names to seconds > 0. "
                "Fix: e.g. est_seconds_by_pool={'gpu': 20}"
            )
        elif "pools" in values and isinstance(values["pools"], (list, tuple)):
            stray = sorted(set(by_pool) - set(values["pools"]))
            if stray:
                problems.append(
                    f"est_seconds_by_pool names {stray} that are not in pools={list(values['pools'])}. "
                    "Fix: add them to pools or drop their estimates"
                )
    if "scales_with" in values:
        problems += _scales_with_problems(values["scales_with"])
    if "isolation" in values:
        problems += isolation_problems(values["isolation"])
    problems += cache_problems(dict(values))
    for key, example in (("retries", "2"), ("retry_delay_seconds", "10")):
        if key in values and not (_is_number(values[key]) and values[key] >= 0):
            problems.append(f"{key}={values[key]!r}: must be a number >= 0. Fix: e.g. {key}={example}")
    timeout = values.get("timeout_seconds")
    if timeout is not None and not (_is_number(timeout) and timeout > 0):
        # 0 read as "no timeout" in the step list, and as Prefect's own meaning in the task
        problems.append(
            f"timeout_seconds={timeout!r}: must be a number > 0 (seconds), or None for no timeout. "
            "Fix: e.g. timeout_seconds=600"
        )
    tags = values.get("tags", ())
    if isinstance(tags, str) or not isinstance(tags, list | tuple | set) or not all(isinstance(t, str) for t in tags):
        problems.append(f"tags={tags!r}: must be a list of strings. Fix: e.g. tags=['nightly']")
    for key in ("name", "description"):
        if key in values and not isinstance(values[key], str):
            problems.append(f"{key}={values[key]!r}: must be a string")
    return problems


def isolation_problems(value: Any, key: str = "isolation") -> list[str]:
    """`isolation` must be one of ISOLATION_CHOICES (None: the pipeline's default)."""
    if value is None or value in ISOLATION_CHOICES:
        return []
    choices = " or ".join(repr(c) for c in ISOLATION_CHOICES)
    return [
        f"{key}={value!r}: must be {choices} ('thread': a thread of the flow's process; 'process': "
        f"a process of its own, for CPU-bound Python code and a measured peak memory). Fix: e.g. {key}='process'"
    ]


def _scales_with_problems(scales: Any) -> list[str]:
    example = "Fix: e.g. scales_with={'n_rows': 100_000} (the value est_seconds holds at)"
    if not isinstance(scales, Mapping):
        return [f"scales_with={scales!r}: must map parameter names to reference values. {example}"]
    return [
        f"scales_with[{name!r}]={value!r}: must be a number > 0, the value of {name!r} at which "
        f"est_seconds holds. {example}"
        for name, value in scales.items()
        if not (isinstance(name, str) and _is_number(value) and value > 0)
    ]


def scales_with_problems(fn: Callable[..., Any], scales: Mapping[str, Any]) -> list[str]:
    """A parameter that scales the work must be a parameter of the function."""
    params = inspect.signature(fn).parameters
    problems = []
    for name in scales if isinstance(scales, Mapping) else ():
        if isinstance(name, str) and name not in params:
            close = difflib.get_close_matches(name, list(params), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(
                f"scales_with names '{name}', which is not a parameter of {fn.__name__}.{hint} "
                f"Parameters: {', '.join(params) or '(none)'}"
            )
    return problems


def signature_problems(fn: Callable[..., Any]) -> list[str]:
    """A component's function must be typed: every parameter and the return value."""
    sig = inspect.signature(fn)
    params = [
        (p.name, p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD), p.annotation is not inspect.Parameter.empty)
        for p in sig.parameters.values()
    ]
    return typing_problems(params, sig.return_annotation is not inspect.Signature.empty)


def typing_problems(params: Iterable[tuple[str, bool, bool]], returns_typed: bool) -> list[str]:
    """signature_problems of a function given as its parameters, in order, each (name,
    *args or **kwargs, annotated), and whether its return value is annotated (also read
    from source: source_check.py)."""
    problems = []
    for name, star, annotated in params:
        if star:
            problems.append(
                f"parameter '{name}' is *args/**kwargs; components take named, typed "
                "parameters so that the pipeline can wire them"
            )
        elif not annotated:
            problems.append(f"parameter '{name}' has no type annotation. Fix: e.g. `{name}: pl.DataFrame`")
    if not returns_typed:
        problems.append("the return value has no type annotation. Fix: add `-> <type>`")
    return problems


def problems_text(label: str, problems: list[str]) -> str:
    """`LABEL has N problem(s):` and one indented line per problem."""
    lines = "\n".join(f"  - {p}" for p in problems)
    return f"{label} has {len(problems)} problem{'s' if len(problems) > 1 else ''}:\n{lines}"


def _raise_if(problems: list[str], fn: Callable[..., Any]) -> None:
    if problems:
        where = f"{fn.__module__}.{fn.__qualname__}"
        error = ComponentSpecError(problems_text(f"component '{fn.__name__}' ({where})", problems))
        error.function = fn.__name__  # discovery checks the module's other components (source_check.py)
        raise error


def source_hash(fn: Callable[..., Any]) -> str:
    """The code version of a function: a hash of its source (16 hex digits), found once
    per function object (reading the source took 1-2 ms, for every step of a run)."""
    try:
        return _source_hash(fn)
    except TypeError:  # an unhashable callable
        return _source_hash.__wrapped__(fn)


@functools.lru_cache(maxsize=4096)
def _source_hash(fn: Callable[..., Any]) -> str:
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = fn.__qualname__
    return hashlib.sha256(source.encode()).hexdigest()[:16]


class Component(Task):
    """A Prefect task carrying a ResourceSpec (`.spec`). `.fn` is the plain function."""

    spec: ResourceSpec
    cache_mode: str | None = None  # "inputs", "run", or None: not declared (a pipeline's default applies)

    @property
    def code_version(self) -> str:
        """A hash of the function's source: durations learned for one version are not
        used for another (a rewritten component starts again from its declaration)."""
        return source_hash(self.fn)

    def with_options(self, **kwargs: Any) -> Component:
        new = super().with_options(**kwargs)
        new.__class__ = type(self)  # Task.with_options builds a plain Task
        new.spec, new.cache_mode = self.spec, self.cache_mode
        return new

    def with_cache(self, mode: str, expiry: Any = None) -> Component:
        """A copy cached by `mode` ("inputs" or "run"; see core/caching.py)."""
        _raise_if(cache_problems({"cache": mode} | ({"cache_expiry": expiry} if expiry is not None else {})), self.fn)
        new = self.with_options(**task_cache_options(mode, expiry))
        new.cache_mode = mode
        return new

    def with_spec(self, **changes: Any) -> Component:
        """A copy with some of the decorator's values changed (resources, task options such
        as retries and timeout_seconds, cache), validated like the decorator."""
        _raise_if(spec_problems(changes) + scales_with_problems(self.fn, changes.get("scales_with", {})), self.fn)
        task = {key: changes.pop(key) for key in TASK_KEYS if key in changes}
        if "tags" in task:
            task["tags"] = set(task["tags"]) | {"planflow"}
        if "retries" in task:
            task["retries"] = int(task["retries"])
        new = self.with_options(**task)
        if "cache" in changes or "cache_expiry" in changes:
            new = new.with_cache(changes.pop("cache", self.cache_mode or "run"), changes.pop("cache_expiry", None))
        if "pools" in changes:
            changes["pools"] = tuple(changes["pools"])
        if "scales_with" in changes:
            changes["scales_with"] = {k: float(v) for k, v in changes["scales_with"].items()}
        new.spec = replace(self.spec, **changes)
        return new

    def __repr__(self) -> str:
        return f"Component({self.name!r}, {self.spec})"


def make_component(fn: Callable[..., Any], **values: Any) -> Component:
    """Wrap a typed function as a Component; raise ComponentSpecError listing every problem."""
    if not callable(fn):
        raise ComponentSpecError(f"@component needs a function, got {fn!r}")
    _raise_if(
        spec_problems(values) + signature_problems(fn) + scales_with_problems(fn, values.get("scales_with", {})), fn
    )
    spec = ResourceSpec(
        cpu=float(values.get("cpu", 1.0)),
        gpu=int(values.get("gpu", 0)),
        mem_gib=float(values.get("mem_gib", 1.0)),
        est_seconds=float(values.get("est_seconds", 10.0)),
        pools=tuple(values.get("pools", ())),
        est_seconds_by_pool=dict(values.get("est_seconds_by_pool", {})),
        scales_with={k: float(v) for k, v in values.get("scales_with", {}).items()},
        isolation=values.get("isolation"),
    )
    task = Component(
        fn=fn,
        name=values.get("name", fn.__name__),
        description=values.get("description") or inspect.getdoc(fn),
        tags=set(values.get("tags", ())) | {"planflow"},
        retries=int(values.get("retries", 0)),
        retry_delay_seconds=values.get("retry_delay_seconds", 0),
        timeout_seconds=values.get("timeout_seconds"),
        persist_result=True,
        **task_cache_options(values.get("cache"), values.get("cache_expiry")),
    )
    task.spec, task.cache_mode = spec, values.get("cache")
    return task


def component(fn: Callable[..., Any] | None = None, /, **values: Any) -> Any:
    """Declare a component: `@component(cpu=2, mem_gib=4, est_seconds=30, pools=["local"])`.

    Also usable as a plain call on a function defined elsewhere:
    `features = component(steps.features, cpu=1, mem_gib=2, est_seconds=5)`.
    """
    if fn is not None:
        return make_component(fn, **values)

    def decorate(function: Callable[..., Any]) -> Component:
        return make_component(function, **values)

    return decorate
