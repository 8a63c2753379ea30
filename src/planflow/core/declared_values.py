"""The values a pipeline gives its own parameters, checked when it is built.

A value given on the command line (`--param rows=lots`, `--param rows=-5`) is refused
before a run exists (cli/params.py); the same value written into the pipeline (its
`params:`, or a step's `params:` in YAML, `Pipeline(params=...)` or `Step(params=...)`
in Python) was not: `planflow plan` planned with it, and `planflow run` made a flow run
that failed on it (Prefect refused 'lots' for an int; a step given rows=-5 failed in the
next one), or `planflow pipelines` showed a traceback. Here a text given where the
component declares a number or a bool (`int`, `float | None`, ...) must read as one, and
a parameter a step scales its estimate with (`scales_with`) must be >= 0. Nothing else
is checked: a step's values reach its function as they are, so a stricter check (None
where `rows: int = None`, a number for a `str`) refused pipelines that ran. The
functions' own defaults are the code's, not checked.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from planflow.core.steps import REQUIRED
from planflow.core.wiring import Binding, Step


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # a hint that does not resolve: said by `planflow run` and the flow itself
        return {}


SCALARS = (int, float, bool)  # the types a text given in their place is checked against


def _scalar(hint: Any) -> Any:
    """The number or bool type `hint` is (`int`, `int | None`, `Optional[float]`), else None."""
    if hint in SCALARS:
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if (origin is typing.Union or origin is types.UnionType) and len(args) == 1 and args[0] in SCALARS:
        return args[0]
    return None


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why `value`, a text given where a number or a bool is declared, is not one
    (pydantic's message), or None. Only texts are checked: the values a pipeline passes
    are not validated on the way to the function (a step's own), or leniently, so a
    stricter check refused pipelines that ran (None where `rows: int = None`, a number
    for a `str`); a text for a number is the YAML mistake that failed in the flow run."""
    scalar = _scalar(hint)
    if scalar is None or not isinstance(value, str):
        return None
    try:
        TypeAdapter(scalar).validate_python(value)
    except ValidationError as exc:
        return exc.errors(include_url=False)[0]["msg"]
    return None


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if typing.get_args(hint) else getattr(hint, "__name__", str(hint))


def negative_number(value: Any) -> bool:
    """A number below 0 (a bool is no number here); what a `scales_with` parameter must not be."""
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
            elif pname in scales and negative_number(value):
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
