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
import importlib
import inspect
import sys
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from planflow.core.component import Component, ComponentSpecError, ResourceSpec, make_component
from planflow.settings import project_root

PIPELINE_FIELDS = ("name", "description", "params", "retries", "steps")
STEP_FIELDS = ("name", "uses", "after", "inputs", "params", "resources")
_MISSING = object()


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
    ) -> None:
        self.name = name
        self.description = description
        self.retries = retries
        # Where it was built, so that a worker process can import it again (see `ref`).
        self.module: str | None = sys._getframe(1).f_globals.get("__name__")
        self.source: str | None = None
        self.steps: dict[str, Step] = {}
        problems: list[str] = []
        if not name or not isinstance(name, str):
            problems.append(f"pipeline name {name!r} must be a non-empty string")
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
        if not self.steps and not problems:
            problems.append("a pipeline needs at least one step")
        self.bindings: dict[str, dict[str, Binding]] = {}
        declared = dict(params or {})
        self.params, param_problems = self._wire(declared)
        problems += param_problems
        problems += self._dependency_problems()
        if not problems:
            cycle = self._find_cycle()
            if cycle:
                problems.append(
                    f"cycle: {' -> '.join(cycle)}. Fix: remove one of these dependencies "
                    "(an `after:` entry or an input named after a downstream step)"
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

    def upstream(self, name: str) -> tuple[str, ...]:
        """The steps that must finish before `name` starts (data and order dependencies)."""
        step = self.steps[name]
        data = [b.source for b in self.bindings.get(name, {}).values() if b.kind == "step"]
        return tuple(dict.fromkeys([*data, *step.after]))

    def _find_cycle(self) -> list[str] | None:
        WHITE, GREY, BLACK = 0, 1, 2
        colour = dict.fromkeys(self.steps, WHITE)
        stack: list[str] = []

        def visit(node: str) -> list[str] | None:
            colour[node] = GREY
            stack.append(node)
            for dep in self.upstream(node):
                if colour[dep] == GREY:
                    cycle = stack[stack.index(dep) :] + [dep]
                    return list(reversed(cycle))  # print in execution direction
                if colour[dep] == WHITE and (found := visit(dep)):
                    return found
            stack.pop()
            colour[node] = BLACK
            return None

        for node in self.steps:
            if colour[node] == WHITE and (found := visit(node)):
                return found
        return None

    def topological_order(self) -> list[str]:
        """Steps in an order where every step comes after its upstream steps
        (stable: declaration order breaks ties)."""
        order: list[str] = []
        done: set[str] = set()
        remaining = list(self.steps)
        while remaining:
            for name in remaining:
                if all(dep in done for dep in self.upstream(name)):
                    order.append(name)
                    done.add(name)
                    remaining.remove(name)
                    break
        return order

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
        if not isinstance(document, dict):
            raise PipelineError(f"{source}: expected a mapping with {', '.join(PIPELINE_FIELDS)}")
        problems = _unknown_fields(document, PIPELINE_FIELDS, "the pipeline")
        steps: list[Step] = []
        raw_steps = document.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            problems.append("`steps:` must be a non-empty list of steps")
            raw_steps = []
        for index, raw in enumerate(raw_steps, start=1):
            if not isinstance(raw, dict):
                problems.append(f"step {index} must be a mapping, got {raw!r}")
                continue
            label = f"step {index} ('{raw.get('name', '?')}')"
            problems += _unknown_fields(raw, STEP_FIELDS, label)
            try:
                steps.append(_step_from_dict(raw, label))
            except (PipelineError, ComponentSpecError) as exc:
                problems.append(str(exc))
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise PipelineError(f"{source}: pipeline '{document.get('name', '?')}' is invalid:\n{lines}")
        try:
            pipeline = cls(
                name=document.get("name", Path(source).stem),
                steps=steps,
                params=document.get("params") or {},
                description=document.get("description", ""),
                retries=int(document.get("retries", 0)),
            )
        except PipelineError as exc:
            raise PipelineError(f"{source}: {exc}") from exc
        if source != "<dict>":
            # Relative to the project where it lies inside it: workers run from the
            # project folder, which has another path inside a container.
            path, root = Path(source).resolve(), project_root()
            pipeline.source = str(path.relative_to(root) if path.is_relative_to(root) else path)
        return pipeline


def _unknown_fields(raw: dict, allowed: tuple[str, ...], where: str) -> list[str]:
    return [
        f"{where}: unknown field '{key}'.{_close(str(key), allowed)} Allowed fields: {', '.join(allowed)}"
        for key in raw
        if key not in allowed
    ]


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


def _step_from_dict(raw: dict, label: str) -> Step:
    uses = raw.get("uses")
    if not isinstance(uses, str):
        raise PipelineError(
            f"{label}: `uses:` must name a component or function, e.g. 'flows.fraud_risk.flow:features'"
        )
    target = import_object(uses)
    resources = raw.get("resources") or {}
    if isinstance(target, Component):
        component = target.with_spec(**resources) if resources else target
    elif callable(target):
        component = make_component(target, **resources)
    else:
        raise PipelineError(f"{label}: '{uses}' is neither a component nor a function")
    name = raw.get("name", component.name)
    if name != component.name:
        component = component.with_options(name=name)
    after = raw.get("after") or []
    if isinstance(after, str):
        after = [after]
    inputs = raw.get("inputs") or {}
    params = raw.get("params") or {}
    if not isinstance(inputs, dict) or not isinstance(params, dict):
        raise PipelineError(f"{label}: `inputs:` and `params:` must be mappings")
    return Step(name=name, component=component, after=tuple(after), inputs=inputs, params=params)


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
