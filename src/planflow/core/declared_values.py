"""The values a pipeline gives its own parameters, checked when it is built.

A value given on the command line (`--param rows=lots`, `--param rows=-5`) is refused
before a run exists (cli/params.py); the same value written into the pipeline (its
`params:`, or a step's `params:` in YAML, `Pipeline(params=...)` or `Step(params=...)`
in Python) was not: `planflow plan` planned with it, and `planflow run` made a flow run
that failed on it (Prefect refused 'lots' for an int; a step given rows=-5 failed in the
next one), or `planflow pipelines` showed a traceback. Each such value is checked here
against the type its component's parameter declares, and a parameter a step scales its
estimate with (`scales_with`) must be >= 0. The functions' own defaults are the code's,
not checked (`rows: int = None` is common Python).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import PydanticUserError, TypeAdapter, ValidationError

from planflow.core.steps import REQUIRED
from planflow.core.wiring import Binding, Step


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # a hint that does not resolve: said by `planflow run` and the flow itself
        return {}


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why `value` is not a `hint` (pydantic's first message), or None when it is (or the
    type is one pydantic cannot check)."""
    try:
        TypeAdapter(hint).validate_python(value)
    except PydanticUserError:
        return None
    except ValidationError as exc:
        return exc.errors(include_url=False)[0]["msg"]
    return None


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _negative(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value < 0


def declared_value_problems(
    steps: Mapping[str, Step], bindings: Mapping[str, Mapping[str, Binding]], declared: Mapping[str, Any]
) -> list[str]:
    """Each pipeline-level value in `declared` and each step's fixed value that its
    component's parameter type refuses, or that is negative where the step scales its
    estimate with it."""
    problems: list[str] = []
    checked: set[str] = set()  # a pipeline parameter is said once, at the first step that takes it
    for step in steps.values():
        hints = _hints(step.component.fn)
        scales = step.spec.scales_with
        for pname, binding in bindings.get(step.name, {}).items():
            if binding.kind == "fixed":
                value, where = binding.source, f"step '{step.name}' params.{pname} = {binding.source!r}"
                fix = f"Fix: a value of that type in step '{step.name}''s params"
            elif binding.kind == "param" and binding.source in declared and binding.source not in checked:
                checked.add(binding.source)
                value, where = declared[binding.source], f"params.{binding.source} = {declared[binding.source]!r}"
                fix = "Fix: a value of that type in the pipeline's params"
            else:
                continue
            if value is REQUIRED:
                continue
            hint = hints.get(pname)
            why = _type_problem(value, hint) if hint is not None else None
            if why is not None:
                default = _default(step, pname)
                example = f", e.g. {pname}: {default!r} (the function's default)" if default is not None else ""
                said = f"step '{step.name}' takes {pname}: {_type_name(hint)} ({why})"
                problems.append(f"{where}: {said}. {fix}{example}")
            elif pname in scales and _negative(value):
                problems.append(
                    f"{where}: step '{step.name}' scales its estimate with {pname} (scales_with), so it must be "
                    f">= 0. Fix: e.g. {pname}: {scales[pname]:g}"
                )
    return problems


def _default(step: Step, pname: str) -> Any:
    parameter = inspect.signature(step.component.fn).parameters.get(pname)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default
