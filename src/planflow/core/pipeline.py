"""Pipeline: a validated DAG of components, built in Python or loaded from YAML.

Wiring follows parameter names (as in Hamilton): a component parameter named
after another step receives that step's output; any other parameter is a
pipeline parameter, with the function's default unless the pipeline sets one.

    >>> pipeline = Pipeline("fraud-risk", [transactions, features, risk_model])
    >>> pipeline.params          # {'seed': 7, 'n_customers': 2000, ...}

Every problem is reported at once with its fix (PipelineError). The parts live beside
it and are importable from here too: its steps (steps.py), the checks of its wiring
(wiring.py), its YAML form (pipeline_file.py) and the loading of a file (loading.py).
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from planflow.core.component import ISOLATION_CHOICES, Component, isolation_problems
from planflow.core.declared_values import declared_value_problems, negative_number
from planflow.core.loading import import_object, importable_name, pipeline_arguments, read_yaml, source_path
from planflow.core.pipeline_file import (
    FIELD_HELP,
    PIPELINE_ALIASES,
    PIPELINE_FIELDS,
    STEP_ALIASES,
    STEP_FIELDS,
    PipelineSpec,
    StepSpec,
)
from planflow.core.steps import REQUIRED, Binding, PipelineError, Step, as_step, did_you_mean
from planflow.core.wiring import apply_cache_default, cycle_problem, dependency_problems, step_graph, wire

__all__ = [
    "FIELD_HELP",
    "PIPELINE_ALIASES",
    "PIPELINE_FIELDS",
    "STEP_ALIASES",
    "STEP_FIELDS",
    "Binding",
    "Pipeline",
    "PipelineError",
    "PipelineSpec",
    "Step",
    "StepSpec",
    "import_object",
]


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
                step = as_step(item)
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
        problems += apply_cache_default(self.steps, cache)
        if not self.steps and not problems:
            problems.append("a pipeline needs at least one step")
        self.bindings, self.params, param_problems = wire(self.steps, dict(params or {}))
        problems += param_problems
        problems += declared_value_problems(self.steps, self.bindings, dict(params or {}))  # beside those: all at once
        problems += self._scaled_by_outputs()
        problems += dependency_problems(self.steps)
        self._order, cycle = cycle_problem(self._graph(), list(self.steps))
        problems += [cycle] if cycle else []
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise PipelineError(f"pipeline '{name}' is invalid:\n{lines}")

    # -- wiring -----------------------------------------------------------------
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
        return step_graph(self.steps, self.bindings)

    def topological_order(self) -> list[str]:
        """Steps in an order where every step comes after its upstream steps
        (stable: declaration order breaks ties)."""
        return list(self._order)

    def downstream(self, name: str) -> tuple[str, ...]:
        return tuple(s for s in self.steps if name in self.upstream(s))

    # -- parameters ---------------------------------------------------------------
    def resolve_params(self, overrides: Mapping[str, Any] | None = None, require: bool = True) -> dict[str, Any]:
        """The pipeline's parameters with `overrides` applied. String values (from
        `--param k=v`) are converted to the type of the default. `require`: a REQUIRED
        parameter left without a value is a problem (else it stays REQUIRED: a listing)."""
        resolved = dict(self.params)
        problems = []
        for key, value in (overrides or {}).items():
            if key not in self.params:
                problems.append(
                    f"unknown parameter '{key}'.{did_you_mean(key, self.params)} "
                    f"Parameters of '{self.name}': {', '.join(sorted(self.params)) or '(none)'}"
                )
                continue
            try:
                resolved[key] = value if self.params[key] is REQUIRED else _coerce(value, self.params[key])
            except ValueError:
                default = self.params[key]
                problems.append(
                    f"parameter '{key}'={value!r} is not a {type(default).__name__} (its default is {default!r})"
                )
        problems += self.missing_problems(resolved) if require else []
        problems += self.work_problems(resolved)
        if problems:
            raise PipelineError(f"pipeline '{self.name}':\n" + "\n".join(f"  - {p}" for p in problems))
        return resolved

    def missing_problems(self, resolved: Mapping[str, Any]) -> list[str]:
        """A parameter declared REQUIRED that `resolved` gives no value."""
        return [
            f"parameter '{name}' is required: this pipeline has no default for it. Fix: give it, e.g. "
            f"`--param {name}=...` (planflow run) or `-p {name}=...` (prefect deployment run)"
            for name, value in resolved.items()
            if value is REQUIRED
        ]

    def work_params(self) -> set[str]:
        """The pipeline parameters a step's estimate scales with (`scales_with`): >= 0."""
        return {binding.source for _, _, binding in self._scaling_bindings() if binding.kind == "param"}

    def _scaling_bindings(self) -> Iterator[tuple[str, str, Any]]:
        """(step, parameter, its binding) of each `scales_with` parameter that is bound."""
        for step, bindings in self.bindings.items():
            for name in self.steps[step].spec.scales_with:
                binding = bindings.get(name)
                if binding is not None:
                    yield step, name, binding

    def _scaled_by_outputs(self) -> list[str]:
        """A `scales_with` parameter that another step's output feeds has no value before
        the run, so it cannot scale the plan (it was taken silently at its reference)."""
        problems = []
        for step, name, binding in self._scaling_bindings():
            if binding.kind == "step":
                problems.append(
                    f"step '{step}': scales_with names '{name}', which step '{binding.source}''s output feeds: "
                    "its value is not known before the run, so the plan cannot scale with it. Fix: scale with "
                    "a pipeline parameter (e.g. the row count the upstream step is given), or drop it from "
                    "scales_with"
                )
        return problems

    def work_problems(self, resolved: Mapping[str, Any]) -> list[str]:
        """A negative value of a parameter a step's estimate scales with (`scales_with`):
        its plan would take the step's time as negative work (it was planned unscaled)."""
        problems = []
        for step, name, binding in self._scaling_bindings():
            value = resolved.get(binding.source) if binding.kind == "param" else None
            if negative_number(value):
                problems.append(
                    f"parameter '{binding.source}'={value!r}: step '{step}' scales its estimate with it "
                    f"(scales_with={{{name!r}: ...}}), so it must be >= 0. "
                    f"Fix: give it e.g. {binding.source}={self.steps[step].spec.scales_with[name]:g} "
                    "(`--param` of planflow run, `-p` of prefect deployment run)"
                )
        return problems

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
    def critical_path_seconds(self, pool: str | None = None, scale: Mapping[str, float] | None = None) -> float:
        """The longest chain of declared estimates (on `pool`, if given), each times its
        step's work factor in `scale` (runtime.history.work_scale; 1 where missing)."""
        finish: dict[str, float] = {}
        for name in self.topological_order():
            spec = self.steps[name].spec
            own = (spec.seconds_on(pool) if pool else spec.est_seconds) * (scale or {}).get(name, 1.0)
            finish[name] = own + max((finish[d] for d in self.upstream(name)), default=0.0)
        return max(finish.values(), default=0.0)

    def totals(self, scale: Mapping[str, float] | None = None) -> dict[str, float]:
        """Total resource demand and time (the ServiceGrid-style summary):
        core-seconds, GPU-seconds, GiB-seconds, sum of estimates, critical path,
        and the peak demand of any single component. `scale`: each step's work factor
        for the parameters it runs with (runtime.history.work_scale), 1 where missing."""
        seconds = {name: step.spec.est_seconds * (scale or {}).get(name, 1.0) for name, step in self.steps.items()}
        specs = [(step.spec, seconds[name]) for name, step in self.steps.items()]
        return {
            "components": len(specs),
            "cpu_seconds": sum(s.cpu * t for s, t in specs),
            "gpu_seconds": sum(s.gpu * t for s, t in specs),
            "mem_gib_seconds": sum(s.mem_gib * t for s, t in specs),
            "total_seconds": sum(seconds.values()),
            "critical_path_seconds": self.critical_path_seconds(scale=scale),
            "peak_cpu": max((s.cpu for s, _ in specs), default=0.0),
            "peak_mem_gib": max((s.mem_gib for s, _ in specs), default=0.0),
            "peak_gpu": max((s.gpu for s, _ in specs), default=0),
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
                    return f"{importable_name(module)}:{attribute}"
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
        return cls.from_dict(read_yaml(path), source=str(path))

    @classmethod
    def from_dict(cls, document: Any, source: str = "<dict>") -> Pipeline:
        """A pipeline from its YAML form (see PipelineSpec); every problem of the file,
        its fields and its steps' imports, is listed at once."""
        arguments = pipeline_arguments(document, source)
        try:
            pipeline = cls(**arguments)
        except PipelineError as exc:
            raise PipelineError(f"{source}: {exc}") from exc
        if source != "<dict>":
            pipeline.source = source_path(source)
        return pipeline


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
