"""Pipeline: a validated DAG of components, built in Python or loaded from YAML.

Wiring follows parameter names (as in Hamilton): a component parameter named
after another step receives that step's output; any other parameter is a
pipeline parameter, with the function's default unless the pipeline sets one.

    >>> pipeline = Pipeline("fraud-risk", [transactions, features, risk_model])
    >>> pipeline.params          # {'seed': 7, 'n_customers': 2000, ...}

Every problem is reported at once with its fix (PipelineError).
"""

from __future__ import annotations

import difflib
import graphlib
import heapq
import importlib
import inspect
import reprlib
import sys
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from planflow.core.caching import CACHE_MODES
from planflow.core.component import (
    ISOLATION_CHOICES,
    KEY_ALIASES,
    RESOURCE_KEYS,
    Component,
    ComponentSpecError,
    ResourceSpec,
    isolation_problems,
    make_component,
)
from planflow.settings import project_root


class PipelineError(ValueError):
    """A pipeline definition is invalid; the message lists every problem and its fix."""


@dataclass(frozen=True)
class Step:
    """One use of a component in a pipeline.

    `inputs` maps a parameter to the step whose output feeds it, where names differ;
    `after` adds order-only dependencies; `params` fixes parameters for this step.
    """

    name: str
    component: Component
    after: tuple[str, ...] = ()
    inputs: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> ResourceSpec:
        return self.component.spec


@dataclass(frozen=True)
class Binding:
    """Where one parameter of a step gets its value."""

    kind: str  # "step" | "param" | "fixed"
    source: Any  # the step name, the pipeline parameter name, or the fixed value


def _close(name: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def _as_step(item: Step | Component) -> Step:
    if isinstance(item, Step):
        return item
    if isinstance(item, Component):
        return Step(name=item.name, component=item)
    raise PipelineError(f"pipeline steps must be components (made with @component) or Step(...); got {item!r}")


class Pipeline:
    """A DAG of components with parameters. Validated on construction."""

    def __init__(
        self,
        name: str,
        steps: Iterable[Step | Component],
        params: Mapping[str, Any] | None = None,
        description: str = "",
        retries: int = 0,
        isolation: str | None = None,
        cache: str | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.retries = retries
        # Where its in-process components run unless they say otherwise (ISOLATION_CHOICES).
        self.isolation = isolation
        # Where it was built, so that a worker process can import it again (see `ref`).
        self.module: str | None = sys._getframe(1).f_globals.get("__name__")
        self.source: str | None = None
        self.steps: dict[str, Step] = {}
        problems: list[str] = []
        if not name or not isinstance(name, str):
            problems.append(f"pipeline name {name!r} must be a non-empty string")
        problems += isolation_problems(isolation)
        for position, item in enumerate(steps, start=1):
            try:
                step = _as_step(item)
            except PipelineError as exc:
                problems.append(str(exc))
                continue
            if step.name in self.steps:
                problems.append(
                    f"duplicate step name '{step.name}' (step {position} repeats an earlier one). "
                    f"Fix: give one of them another name, e.g. Step(name='{step.name}_2', ...)"
                )
                continue
            self.steps[step.name] = step
        problems += _apply_cache_default(self.steps, cache)
        if not self.steps and not problems:
            problems.append("a pipeline needs at least one step")
        self.bindings: dict[str, dict[str, Binding]] = {}
        declared = dict(params or {})
        self.params, param_problems = self._wire(declared)
        problems += param_problems
        problems += self._dependency_problems()
        self._order: list[str] = []
        try:
            self._order = self._sorted()
        except graphlib.CycleError as exc:
            problems.append(
                f"cycle: {' -> '.join(self._readable_cycle(exc.args[1]))}. Fix: remove one of these "
                "dependencies (an `after:` entry or an input named after a downstream step)"
            )
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise PipelineError(f"pipeline '{name}' is invalid:\n{lines}")

    # -- wiring -----------------------------------------------------------------
    def _wire(self, declared: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        problems: list[str] = []
        defaults: dict[str, tuple[Any, str]] = {}
        for step in self.steps.values():
            signature = inspect.signature(step.component.fn)
            names = list(signature.parameters)
            for param in step.inputs:
                if param not in signature.parameters:
                    problems.append(
                        f"step '{step.name}' maps input '{param}', but its function takes "
                        f"({', '.join(names)}).{_close(param, names)}"
                    )
            for param in step.params:
                if param not in signature.parameters:
                    problems.append(
                        f"step '{step.name}' sets parameter '{param}', but its function takes "
                        f"({', '.join(names)}).{_close(param, names)}"
                    )
            bindings: dict[str, Binding] = {}
            for pname, param in signature.parameters.items():
                if pname in step.inputs:
                    bindings[pname] = Binding("step", step.inputs[pname])
                elif pname in step.params:
                    bindings[pname] = Binding("fixed", step.params[pname])
                elif pname in self.steps and pname != step.name:
                    bindings[pname] = Binding("step", pname)
                elif pname in declared:
                    bindings[pname] = Binding("param", pname)
                elif param.default is not inspect.Parameter.empty:
                    bindings[pname] = Binding("param", pname)
                    seen = defaults.get(pname)
                    if seen is not None and seen[0] != param.default:
                        problems.append(
                            f"parameter '{pname}' defaults to {seen[0]!r} in step '{seen[1]}' but "
                            f"to {param.default!r} in step '{step.name}'. Fix: set it once in the "
                            f"pipeline's params, e.g. params={{'{pname}': {seen[0]!r}}}"
                        )
                    elif seen is None:
                        defaults[pname] = (param.default, step.name)
                else:
                    problems.append(
                        f"step '{step.name}' parameter '{pname}' has no source: no step is named "
                        f"'{pname}', the pipeline has no parameter '{pname}' and the function "
                        f"gives no default.{_close(pname, self.steps)} Fix: map it with "
                        f"inputs={{'{pname}': '<step>'}}, or add '{pname}' to the pipeline's params"
                    )
            self.bindings[step.name] = bindings
        params = {name: value for name, (value, _) in defaults.items()}
        used = {b.source for bs in self.bindings.values() for b in bs.values() if b.kind == "param"}
        for pname in declared:
            if pname not in used:
                problems.append(
                    f"pipeline parameter '{pname}' is not used by any step."
                    f"{_close(pname, used)} Fix: remove it or name it as a step parameter"
                )
        params.update(declared)
        return params, problems

    def _dependency_problems(self) -> list[str]:
        problems = []
        for step in self.steps.values():
            referenced = [("after", dep) for dep in step.after] + [
                (f"inputs.{param}", source) for param, source in step.inputs.items()
            ]
            for where, dep in referenced:
                if dep not in self.steps:
                    problems.append(
                        f"step '{step.name}' {where} names unknown step '{dep}'."
                        f"{_close(dep, self.steps)} Known steps: {', '.join(self.steps)}"
                    )
        return problems

    def isolation_of(self, name: str) -> str:
        """Where step `name` runs in-process: its component's choice, else the pipeline's."""
        return self.steps[name].spec.isolation or self.isolation or ISOLATION_CHOICES[0]

    def upstream(self, name: str) -> tuple[str, ...]:
        """The steps that must finish before `name` starts (data and order dependencies)."""
        step = self.steps[name]
        data = [b.source for b in self.bindings.get(name, {}).values() if b.kind == "step"]
        return tuple(dict.fromkeys([*data, *step.after]))

    def _graph(self) -> dict[str, tuple[str, ...]]:
        """Each step -> the known steps it waits for (unknown names are reported apart)."""
        return {name: tuple(d for d in self.upstream(name) if d in self.steps) for name in self.steps}

    def _sorted(self) -> list[str]:
        """A topological order that keeps declaration order wherever the graph allows:
        of the steps ready at each point, the one declared first comes first. Raises
        graphlib.CycleError when there is none."""
        sorter = graphlib.TopologicalSorter(self._graph())
        sorter.prepare()
        position = {name: index for index, name in enumerate(self.steps)}
        ready = [(position[name], name) for name in sorter.get_ready()]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            _, name = heapq.heappop(ready)
            order.append(name)
            sorter.done(name)
            for successor in sorter.get_ready():
                heapq.heappush(ready, (position[successor], successor))
        return order

    def _readable_cycle(self, cycle: list[str]) -> list[str]:
        """graphlib's cycle (each step before the one that waits for it, first repeated
        last), turned to start at the step declared first, so the message is stable."""
        nodes = list(cycle[:-1]) or list(cycle)
        position = list(self.steps)
        first = min(range(len(nodes)), key=lambda i: position.index(nodes[i]))
        nodes = nodes[first:] + nodes[:first]
        return [*nodes, nodes[0]]

    def topological_order(self) -> list[str]:
        """Steps in an order where every step comes after its upstream steps
        (stable: declaration order breaks ties)."""
        return list(self._order)

    def downstream(self, name: str) -> tuple[str, ...]:
        return tuple(s for s in self.steps if name in self.upstream(s))

    # -- parameters ---------------------------------------------------------------
    def resolve_params(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The pipeline's parameters with `overrides` applied. String values (from
        `--param k=v`) are converted to the type of the default."""
        resolved = dict(self.params)
        problems = []
        for key, value in (overrides or {}).items():
            if key not in self.params:
                problems.append(
                    f"unknown parameter '{key}'.{_close(key, self.params)} "
                    f"Parameters of '{self.name}': {', '.join(sorted(self.params)) or '(none)'}"
                )
                continue
            try:
                resolved[key] = _coerce(value, self.params[key])
            except ValueError:
                default = self.params[key]
                problems.append(
                    f"parameter '{key}'={value!r} is not a {type(default).__name__} (its default is {default!r})"
                )
        if problems:
            raise PipelineError(f"pipeline '{self.name}':\n" + "\n".join(f"  - {p}" for p in problems))
        return resolved

    def step_kwargs(self, name: str, params: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments of one step, from upstream outputs and parameters."""
        kwargs = {}
        for pname, binding in self.bindings[name].items():
            if binding.kind == "step":
                kwargs[pname] = outputs[binding.source]
            elif binding.kind == "param":
                kwargs[pname] = params[binding.source]
            else:
                kwargs[pname] = binding.source
        return kwargs

    # -- totals -----------------------------------------------------------------------
    def critical_path_seconds(self, pool: str | None = None) -> float:
        finish: dict[str, float] = {}
        for name in self.topological_order():
            spec = self.steps[name].spec
            own = spec.seconds_on(pool) if pool else spec.est_seconds
            finish[name] = own + max((finish[d] for d in self.upstream(name)), default=0.0)
        return max(finish.values(), default=0.0)

    def totals(self) -> dict[str, float]:
        """Total resource demand and time (the ServiceGrid-style summary):
        core-seconds, GPU-seconds, GiB-seconds, sum of estimates, critical path,
        and the peak demand of any single component."""
        specs = [s.spec for s in self.steps.values()]
        return {
            "components": len(specs),
            "cpu_seconds": sum(s.cpu * s.est_seconds for s in specs),
            "gpu_seconds": sum(s.gpu * s.est_seconds for s in specs),
            "mem_gib_seconds": sum(s.mem_gib * s.est_seconds for s in specs),
            "total_seconds": sum(s.est_seconds for s in specs),
            "critical_path_seconds": self.critical_path_seconds(),
            "peak_cpu": max((s.cpu for s in specs), default=0.0),
            "peak_mem_gib": max((s.mem_gib for s in specs), default=0.0),
            "peak_gpu": max((s.gpu for s in specs), default=0),
        }

    def param_types(self) -> dict[str, Any]:
        """Each pipeline parameter's type, from the first component that annotates it."""
        types: dict[str, Any] = {}
        for step in self.steps.values():
            hints = typing.get_type_hints(step.component.fn)
            for pname, binding in self.bindings[step.name].items():
                if binding.kind == "param" and binding.source not in types and pname in hints:
                    types[binding.source] = hints[pname]
        return types

    # -- where it comes from --------------------------------------------------------------
    @property
    def ref(self) -> str:
        """How another process loads this pipeline: a YAML file's path, or the import path
        `package.module:attribute` of the module that defines it (found in that module)."""
        if self.source:
            return self.source
        module = sys.modules.get(self.module or "")
        if module is not None and self.module != "__main__":
            for attribute, value in vars(module).items():
                if value is self:
                    return f"{self.module}:{attribute}"
        raise PipelineError(
            f"pipeline '{self.name}' was built in {self.module or 'an unknown module'}, which "
            "another process cannot import. Fix: define it at module level of an importable "
            "module (e.g. flows/<name>/flow.py) or in a YAML file"
        )

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, steps={list(self.steps)})"

    # -- YAML ---------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> Pipeline:
        path = Path(path)
        try:
            document = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise PipelineError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(document, source=str(path))

    @classmethod
    def from_dict(cls, document: Any, source: str = "<dict>") -> Pipeline:
        """A pipeline from its YAML form (see PipelineSpec); every problem of the file,
        its fields and its steps' imports, is listed at once."""
        if not isinstance(document, dict):
            raise PipelineError(
                f"{source}: expected a mapping with {', '.join(PIPELINE_FIELDS)}, got {_show(document)}. "
                "Fix: e.g. `name: my-pipeline` and `steps: [{uses: 'package.module:component'}]`"
            )
        problems: list[tuple[int, str]] = []  # (step index, -1 for the pipeline; message)
        spec: PipelineSpec | None = None
        try:
            spec = PipelineSpec.model_validate(document)
        except ValidationError as exc:
            problems += _spec_problems(exc, document)
        steps, step_problems = _build_steps(document, spec)
        problems = sorted(problems + step_problems, key=lambda problem: problem[0])
        if problems or spec is None:
            lines = "\n".join(f"  - {message}" for _, message in problems)
            raise PipelineError(f"{source}: pipeline '{document.get('name', '?')}' is invalid:\n{lines}")
        try:
            pipeline = cls(
                name=spec.name or Path(source).stem,
                steps=steps,
                params=spec.params,
                description=spec.description,
                retries=spec.retries,
                isolation=spec.isolation,
                cache=spec.cache,
            )
        except PipelineError as exc:
            raise PipelineError(f"{source}: {exc}") from exc
        if source != "<dict>":
            # Relative to the project where it lies inside it: workers run from the
            # project folder, which has another path inside a container.
            path, root = Path(source).resolve(), project_root()
            pipeline.source = str(path.relative_to(root) if path.is_relative_to(root) else path)
        return pipeline


def _apply_cache_default(steps: dict[str, Step], cache: str | None) -> list[str]:
    """A pipeline-wide `cache` for the components that declare none (`cache_mode` None)."""
    if cache is None:
        return []
    if cache not in CACHE_MODES:
        return [f"cache={cache!r}: must be one of {', '.join(CACHE_MODES)}. Fix: e.g. Pipeline(..., cache='inputs')"]
    for name, step in steps.items():
        if step.component.cache_mode is None:
            steps[name] = replace(step, component=step.component.with_cache(cache))
    return []


# -- the YAML form -----------------------------------------------------------------------
def _none_is_empty(value: Any, empty: Any) -> Any:
    return empty if value is None else value


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
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else _none_is_empty(value, [])

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
    retries: int = Field(0, ge=0, description="retries of the whole flow run")
    isolation: Literal["thread", "process"] | None = Field(
        None, description="where components run in-process unless they say: 'thread' or 'process'"
    )
    cache: Literal["inputs", "run"] | None = Field(
        None, description="cache of the components that declare none: 'inputs' (across runs) or 'run'"
    )
    steps: list[StepSpec] = Field(min_length=1, description="the steps, in declaration order")

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


def _show(value: Any) -> str:
    """A value as the message quotes it, cut short when long."""
    return _short.repr(value)


def _step_label(index: int, raw: Any) -> str:
    if not isinstance(raw, dict):
        return f"step {index + 1}"
    uses = raw.get("uses")
    name = raw.get("name") or (str(uses).replace(":", ".").rpartition(".")[2] if isinstance(uses, str) else "?")
    return f"step {index + 1} ('{name}')"


def _spec_problems(error: ValidationError, document: Mapping[str, Any]) -> list[tuple[int, str]]:
    """pydantic's errors as planflow's messages (where, the value, what it must be, the
    fix), each with the index of its step (-1: the pipeline's own fields)."""
    problems = []
    for item in error.errors():
        loc = item["loc"]
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            index, where = loc[1], _step_label(loc[1], document["steps"][loc[1]])
            path, allowed, aliases = loc[2:], STEP_FIELDS, STEP_ALIASES
        else:
            index, where, path, allowed, aliases = -1, "the pipeline", loc, PIPELINE_FIELDS, PIPELINE_ALIASES
        problems.append((index, _describe(item, where, path, allowed, aliases)))
    return problems


def _describe(item: Any, where: str, path: tuple, allowed: tuple[str, ...], aliases: Mapping[str, str]) -> str:
    value, fields = item.get("input"), ", ".join(allowed)
    if item["type"] == "extra_forbidden":
        key = str(path[-1])
        if allowed == STEP_FIELDS and (key in RESOURCE_KEYS or key in KEY_ALIASES):
            resource = KEY_ALIASES.get(key, key)
            return (
                f"{where}: unknown field '{key}': a step's resources go under `resources:`. "
                f"Fix: write `resources: {{{resource}: {_show(value)}}}`. Allowed fields: {fields}"
            )
        target = aliases.get(key) or next(iter(difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)), None)
        if target is None:
            return f"{where}: unknown field '{key}' (value {_show(value)}). Fix: remove it. Allowed fields: {fields}"
        note = " planflow lists the steps a step waits for under `after:`." if aliases.get(key) == "after" else ""
        return (
            f"{where}: unknown field '{key}'. Did you mean '{target}'?{note} "
            f"Fix: write `{target}: {_show(value)}`. Allowed fields: {fields}"
        )
    if not path:
        return f"{where} must be a mapping of {fields}, got {_show(value)}. Fix: e.g. `{FIELD_HELP['uses'][1]}`"
    field_name = str(path[0])
    expected, example = FIELD_HELP.get(field_name, ("valid", f"{field_name}: ..."))
    if item["type"] == "missing":
        return f"{where}: `{field_name}:` is missing; it must be {expected}. Fix: e.g. `{example}`"
    if len(path) == 1:
        subject, rule = f"`{field_name}:`", "it"
    else:
        subject = "`" + field_name + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[1:]) + "`"
        rule = f"`{field_name}:`"
    return f"{where}: {subject} is {_show(value)}, but {rule} must be {expected}. Fix: e.g. `{example}`"


def import_object(path: str) -> Any:
    """Import `package.module:attribute` (or `package.module.attribute`)."""
    module_name, _, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attribute:
        raise PipelineError(f"'{path}' is not an import path. Fix: write it as 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineError(f"cannot import module '{module_name}' (from '{path}'): {exc}") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise PipelineError(f"module '{module_name}' has no '{attribute}'.{_close(attribute, names)}") from None


def _build_steps(document: Mapping[str, Any], spec: PipelineSpec | None) -> tuple[list[Step], list[tuple[int, str]]]:
    """The steps of a pipeline file, importing what each `uses:`; with the problems of
    those imports and resource overrides (a step whose fields are invalid is still
    imported, so that its import problem shows in the same listing)."""
    steps: list[Step] = []
    problems: list[tuple[int, str]] = []
    raw_steps = document.get("steps") if isinstance(document.get("steps"), list) else []
    for index, raw in enumerate(raw_steps):
        label = _step_label(index, raw)
        try:
            steps.append(_build_step(spec.steps[index] if spec is not None else StepSpec.model_validate(raw)))
        except ValidationError:  # already described by _spec_problems
            uses = raw.get("uses") if isinstance(raw, dict) else None
            try:
                if isinstance(uses, str):
                    import_object(uses)
            except PipelineError as exc:
                problems.append((index, f"{label}: {exc}"))
        except (PipelineError, ComponentSpecError) as exc:
            nested = str(exc).replace("\n  - ", "\n      - ")  # the component's own list, indented
            problems.append((index, f"{label}: {nested}"))
    return steps, problems


def _build_step(spec: StepSpec) -> Step:
    target = import_object(spec.uses)
    if isinstance(target, Component):
        component = target.with_spec(**spec.resources) if spec.resources else target
    elif callable(target):
        component = make_component(target, **spec.resources)
    else:
        raise PipelineError(
            f"'{spec.uses}' is a {type(target).__name__}, neither a component nor a function. "
            "Fix: point `uses:` at a function decorated with @component, or a plain typed function"
        )
    name = spec.name or component.name
    if name != component.name:
        component = component.with_options(name=name)
    return Step(name=name, component=component, after=tuple(spec.after), inputs=spec.inputs, params=spec.params)


def _coerce(value: Any, default: Any) -> Any:
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    if isinstance(default, bool):
        lowered = value.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(value)
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return yaml.safe_load(value)
