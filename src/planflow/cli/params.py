"""`--param KEY=VALUE`: split, then each value converted to its parameter's type.

The type is the one the pipeline's flow declares (the component's hint, else the
default's type), checked with pydantic as Prefect checks the flow's own signature, so a
value the command line accepts is one the flow run accepts.

    >>> typed_values(pipeline, parse_pairs(["n=500", "fast=yes"]))
    {'n': 500, 'fast': True}
"""

from __future__ import annotations

import difflib
import json
import shlex
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import PydanticUserError, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from planflow.core.finite import non_finite_at
from planflow.core.pipeline import Pipeline
from planflow.core.steps import REQUIRED

PYTHON_NONE = ("None", "none")  # read as null, as YAML's null, ~ and the empty value are


class ParamError(ValueError):
    """One or more --param values are malformed, unknown or of the wrong type; the
    message lists every problem with its fix."""


class NonFiniteError(ValueError):
    """A value holds nan or infinity, which a flow run's JSON parameters cannot carry."""


def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """`["n=5", "tag=a=b"]` -> `{"n": "5", "tag": "a=b"}`; ParamError naming each pair
    that is not KEY=VALUE."""
    params: dict[str, str] = {}
    problems = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fix = f"--param {shlex.quote(pair + '=VALUE')}" if not sep else "name the parameter, e.g. --param seed=3"
            problems.append(f"--param {shlex.quote(pair)} is not KEY=VALUE. Fix: {fix}")
            continue
        key = key.strip()
        if key in params and params[key] != value:  # which one was meant? (the last had won, silently)
            problems.append(
                f"--param {key} is given twice, as {params[key]!r} and {value!r}. Fix: give it once, "
                f"e.g. --param {shlex.quote(f'{key}={value}')}"
            )
        params[key] = value
    if problems:
        raise ParamError(_listed(problems))
    return params


def typed_values(pipeline: Pipeline, raw: Mapping[str, str], require: bool = True) -> dict[str, Any]:
    """The command line's text values as the values `pipeline`'s flow takes; ParamError
    listing every unknown name and every value its type refuses (and, when `require`,
    every REQUIRED parameter not given)."""
    hints = pipeline.param_types()
    values: dict[str, Any] = {}
    problems = []
    for key, text in raw.items():
        if key not in pipeline.params:
            problems.append(_unknown(pipeline, key, text))
            continue
        default = pipeline.params[key]
        expected = hints.get(key, Any if default is None or default is REQUIRED else type(default))
        try:
            values[key] = convert(text, expected)
        except ValueError as exc:
            why = f" ({exc})" if isinstance(exc, NonFiniteError) else ""
            problems.append(
                f"--param {_pair(key, text)}: parameter '{key}' of pipeline '{pipeline.name}' takes "
                f"{type_name(expected)}, got {text!r}{why}. Fix: e.g. --param {_example(key, default, expected)}"
            )
    if not problems:  # a required one not given, a negative `scales_with` one: refused before any run (exit 2)
        resolved = {**pipeline.params, **values}
        missing = pipeline.missing_problems(resolved) if require else []
        problems = [f"--param: {p}" for p in missing + pipeline.work_problems(resolved)]
    if problems:
        raise ParamError(_listed(problems))
    return values


def convert(text: str, expected: Any) -> Any:
    """`text` as a value of type `expected`: parsed directly ("5" -> 5, "yes" -> True),
    else read as YAML ("[1, 2]" -> [1, 2]) and checked. ValueError when neither fits."""
    try:
        adapter = TypeAdapter(expected)
    except PydanticUserError:
        return text  # a type pydantic cannot check: the flow gets the text, as before
    try:
        value = adapter.validate_python(text)
    except ValidationError:
        try:
            # Python's spelling of null too, where the type allows None: `--param limit=None`
            # was refused, with `e.g. --param limit=None` as its fix
            read = None if text.strip() in PYTHON_NONE else yaml.safe_load(text)
            # YAML's yes/no/on/off/true are booleans, which pydantic's lax mode takes for 1 and 0:
            # `--param C=off` ran with C=0. A boolean is one only where one is expected (strict),
            # as Prefect's own check of a deployment run's parameters has it
            value = adapter.validate_python(read, strict=isinstance(read, bool))
        except (ValidationError, yaml.YAMLError) as exc:
            raise ValueError(f"{text!r} is not {type_name(expected)}") from exc
    if non_finite_at(value) is not None:
        raise NonFiniteError(
            "a flow run's parameters travel as JSON, which has no nan or infinity: the run would get null"
        )
    return value


def type_name(expected: Any) -> str:
    """`int` -> "an int", `list[float]` -> "a list[float]", a Literal -> "one of 'a', 'b'"."""
    if get_origin(expected) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in get_args(expected))
    name = expected.__name__ if isinstance(expected, type) else str(expected).replace("typing.", "")
    return f"{'an' if name[:1].lower() in tuple('aeiou') else 'a'} {name}"


def _takes_none(expected: Any) -> bool:
    """Whether a parameter of type `expected` takes None (`limit: int = None` does not)."""
    try:
        TypeAdapter(expected).validate_python(None)
    except (ValidationError, PydanticUserError):
        return False
    return True


def _listed(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems with --param:\n" + "\n".join(f"  - {p}" for p in problems)


def _example(key: str, default: Any, expected: Any = Any) -> str:
    if default is REQUIRED or (default is None and not _takes_none(expected)):  # no default to show
        return f"{key}=..."
    if isinstance(default, Enum):
        default = default.value
    if isinstance(default, bool):
        text = str(default).lower()
    elif default is None:
        text = "null"
    elif isinstance(default, str | int | float):
        text = str(default)
    else:  # lists, mappings, pydantic models, dataclasses: as JSON, which `convert` reads back
        try:
            text = json.dumps(to_jsonable_python(default))
        except (TypeError, ValueError, PydanticSerializationError):
            text = str(default)
    return shlex.quote(f"{key}={text}")


def _pair(key: str, text: str) -> str:
    """`n=abc` as the user typed it (quoted only where a shell needs it)."""
    return shlex.quote(f"{key}={text}")


def _unknown(pipeline: Pipeline, key: str, text: str) -> str:
    close = difflib.get_close_matches(key, list(pipeline.params), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    known = ", ".join(sorted(pipeline.params)) or "(none)"
    return (
        f"--param {_pair(key, text)}: pipeline '{pipeline.name}' has no parameter '{key}'.{hint} "
        f"Its parameters: {known}"
    )
