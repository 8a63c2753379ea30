"""The YAML form of a pipeline (a pipeline file), as pydantic models, and pydantic's
errors about a file turned into planflow's messages: where, the value, what it must be,
and the fix (with the field users most likely meant, from other orchestrators' names).

    name: fraud-risk
    params: {seed: 7}
    required: [input_path]      # parameters every run must be given (no default)
    steps:
      - uses: flows.fraud_risk.flow:transactions
      - uses: flows.fraud_risk.flow:features
        resources: {cpu: 2}
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from planflow.core.component import ALLOWED_KEYS, KEY_ALIASES


def _none_is_empty(value: Any, empty: Any) -> Any:
    return empty if value is None else value


def _one_or_many(value: Any) -> Any:
    """A name or a list of names, as a list (none: empty)."""
    return [value] if isinstance(value, str) else _none_is_empty(value, [])


class StepSpec(BaseModel):
    """One entry of a pipeline file's `steps:`.

    - name: doubled                      # default: the component's name
      uses: toy_dags:scaled              # a component, or a plain typed function
      after: [total]                     # order-only dependencies
      inputs: {numbers: numbers}         # parameter -> the step whose output feeds it
      params: {factor: 3.0}              # fixed parameters of this step
      resources: {cpu: 0.5}              # overrides of the component's resources
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="the step's name; default: the component's")
    uses: str = Field(min_length=1, description="import path of a component or function")
    after: list[str] = Field(default_factory=list, description="steps that must finish first")
    inputs: dict[str, str] = Field(default_factory=dict, description="parameter -> upstream step")
    params: dict[str, Any] = Field(default_factory=dict, description="fixed parameters of this step")
    resources: dict[str, Any] = Field(default_factory=dict, description="resource overrides (cpu, mem_gib, ...)")

    @field_validator("after", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return _one_or_many(value)

    @field_validator("inputs", "params", "resources", mode="before")
    @classmethod
    def _empty_mapping(cls, value: Any) -> Any:
        return _none_is_empty(value, {})


class PipelineSpec(BaseModel):
    """A pipeline file: `name`, `description`, `params`, `retries` and `steps`."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, description="the pipeline's name; default: the file's stem")
    description: str = Field("", description="shown in `planflow pipelines` and the Prefect UI")
    params: dict[str, Any] = Field(default_factory=dict, description="pipeline parameters and their defaults")
    required: list[str] = Field(
        default_factory=list,
        description="pipeline parameters with no default, which every run must be given (e.g. a data path)",
    )
    retries: int = Field(0, ge=0, description="retries of the whole flow run")
    isolation: Literal["thread", "process"] | None = Field(
        None, description="where components run in-process unless they say: 'thread' or 'process'"
    )
    cache: Literal["inputs", "run"] | None = Field(
        None, description="cache of the components that declare none: 'inputs' (across runs) or 'run'"
    )
    steps: list[StepSpec] = Field(min_length=1, description="the steps, in declaration order")

    @field_validator("required", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return _one_or_many(value)

    @field_validator("required")
    @classmethod
    def _no_default(cls, value: list[str], info: ValidationInfo) -> list[str]:
        both = [name for name in value if name in (info.data.get("params") or {})]
        if both:
            defaults = ", ".join(f"{name}: {show(info.data['params'][name])}" for name in both)
            raise ValueError(
                f"names {', '.join(repr(n) for n in both)}, which `params:` gives a default ({defaults}); a "
                f"required parameter has none. Fix: remove it from `params:` (every run must give it) "
                f"or from `required:` (the default stands)"
            )
        return value

    @field_validator("description", mode="before")
    @classmethod
    def _empty_text(cls, value: Any) -> Any:
        return _none_is_empty(value, "")

    @field_validator("params", mode="before")
    @classmethod
    def _empty_mapping(cls, value: Any) -> Any:
        return _none_is_empty(value, {})


PIPELINE_FIELDS = tuple(PipelineSpec.model_fields)
STEP_FIELDS = tuple(StepSpec.model_fields)
# Names users reach for first (from other orchestrators), mapped to planflow's field.
PIPELINE_ALIASES = {
    "pipeline": "name",
    "title": "name",
    "desc": "description",
    "parameters": "params",
    "retry": "retries",
    "tasks": "steps",
    "components": "steps",
    "nodes": "steps",
    "stages": "steps",
}
STEP_ALIASES = {
    "depends_on": "after",
    "dependencies": "after",
    "depends": "after",
    "needs": "after",
    "requires": "after",
    "upstream": "after",
    "component": "uses",
    "function": "uses",
    "fn": "uses",
    "task": "uses",
    "use": "uses",
    "parameters": "params",
    "args": "params",
    "kwargs": "params",
    "with": "params",
    "resource": "resources",
    "requests": "resources",
    "requirements": "resources",
    "input": "inputs",
}
# What each field must be, and an example of it.
FIELD_HELP = {
    "name": ("a non-empty string", "name: features"),
    "description": ("a string", "description: nightly risk scores"),
    "params": ("a mapping of parameter names to values", "params: {seed: 7}"),
    "required": ("a parameter name or a list of them", "required: [input_path]"),
    "retries": ("a whole number >= 0", "retries: 2"),
    "isolation": ("'thread' or 'process'", "isolation: process"),
    "cache": ("inputs (reuse results across runs) or run (within a flow run)", "cache: inputs"),
    "steps": ("a non-empty list of steps", "steps: [{uses: 'flows.fraud_risk.flow:features'}]"),
    "uses": ("the import path of a component or function", "uses: 'flows.fraud_risk.flow:features'"),
    "after": ("a step name or a list of step names", "after: [features]"),
    "inputs": ("a mapping of parameter name -> upstream step name", "inputs: {rows: transactions}"),
    "resources": ("a mapping of resource keys to values", "resources: {cpu: 2, mem_gib: 4}"),
}
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict = 60, 60, 6, 6


def show(value: Any) -> str:
    """A value as the message quotes it, cut short when long."""
    return _short.repr(value)


def step_label(index: int, raw: Any) -> str:
    if not isinstance(raw, dict):
        return f"step {index + 1}"
    uses = raw.get("uses")
    name = raw.get("name") or (str(uses).replace(":", ".").rpartition(".")[2] if isinstance(uses, str) else "?")
    return f"step {index + 1} ('{name}')"


def spec_problems(error: ValidationError, document: Mapping[str, Any]) -> list[tuple[int, str]]:
    """pydantic's errors as planflow's messages (where, the value, what it must be, the
    fix), each with the index of its step (-1: the pipeline's own fields)."""
    problems = []
    for item in error.errors():
        loc = item["loc"]
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            index, where = loc[1], step_label(loc[1], document["steps"][loc[1]])
            path, allowed, aliases, holder = loc[2:], STEP_FIELDS, STEP_ALIASES, document["steps"][loc[1]]
        else:
            index, where, path, allowed, aliases = -1, "the pipeline", loc, PIPELINE_FIELDS, PIPELINE_ALIASES
            holder = document
        present = set(holder) if isinstance(holder, Mapping) else set()
        problems.append((index, _describe(item, where, path, allowed, aliases, present)))
    return problems


def _describe(
    item: Any, where: str, path: tuple, allowed: tuple[str, ...], aliases: Mapping[str, str], present: Any = ()
) -> str:
    """One of pydantic's errors as planflow's message; `present`: the fields the mapping holds."""
    value, fields = item.get("input"), ", ".join(allowed)
    if item["type"] == "extra_forbidden":
        key = str(path[-1])
        # a component's option (cpu, retries, cache, ...) written beside the step's fields
        if allowed == STEP_FIELDS and (key in ALLOWED_KEYS or key in KEY_ALIASES):
            resource = KEY_ALIASES.get(key, key)
            return (
                f"{where}: unknown field '{key}': a step's resources go under `resources:`. "
                f"Fix: write `resources: {{{resource}: {show(value)}}}`. Allowed fields: {fields}"
            )
        target = aliases.get(key) or next(iter(difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)), None)
        if target is None:
            return f"{where}: unknown field '{key}' (value {show(value)}). Fix: remove it. Allowed fields: {fields}"
        note = " planflow lists the steps a step waits for under `after:`." if aliases.get(key) == "after" else ""
        if target in present:  # renaming it would give the field twice
            return (
                f"{where}: unknown field '{key}'. Did you mean '{target}'? `{target}:` is given already. "
                f"Fix: remove `{key}:`, or move what it holds into `{target}:`. Allowed fields: {fields}"
            )
        return (
            f"{where}: unknown field '{key}'. Did you mean '{target}'?{note} "
            f"Fix: write `{target}: {show(value)}`. Allowed fields: {fields}"
        )
    if not path:
        return f"{where} must be a mapping of {fields}, got {show(value)}. Fix: e.g. `{FIELD_HELP['uses'][1]}`"
    field_name = str(path[0])
    if item["type"] == "value_error" and len(path) == 1:  # a rule of the field's own: its message says it
        return f"{where}: `{field_name}:` {item['ctx']['error']}"
    expected, example = FIELD_HELP.get(field_name, ("valid", f"{field_name}: ..."))
    if item["type"] == "missing":
        return f"{where}: `{field_name}:` is missing; it must be {expected}. Fix: e.g. `{example}`"
    if len(path) == 1:
        subject, rule = f"`{field_name}:`", "it"
    else:
        subject = "`" + field_name + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[1:]) + "`"
        rule = f"`{field_name}:`"
    return f"{where}: {subject} is {show(value)}, but {rule} must be {expected}. Fix: e.g. `{example}`"
