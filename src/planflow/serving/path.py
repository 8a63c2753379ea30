"""The online path of a pipeline: which steps answer one request, and which outputs of
the last Completed run they use.

    >>> online = OnlinePath(
    ...     pipeline,
    ...     steps={"features": feature_frame, "scores": score_rows, "decisions": decide},
    ...     load={"risk_model": "risk_model", "policy": "decisions"},
    ... )

Wiring follows parameter names, as in a Pipeline: a parameter named `request` receives
the request's records (its annotation, `list[Record]`, is the request schema); one named
after an earlier online step receives that step's output; one named in `load` receives
that output of the pipeline's last Completed run; any other parameter keeps its default.
The last step returns one value per record. Every problem is reported at once with its
fix (OnlinePathError). The same path can be written in YAML (`OnlinePath.from_yaml`).
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planflow.core import discovery
from planflow.core.component import Component
from planflow.core.pipeline import Pipeline, import_object

REQUEST = "request"
DEFAULT_MAX_BATCH = 64


class OnlinePathError(ValueError):
    """An online path is invalid; the message lists every problem and its fix (`problems`:
    each on its own, where known)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


@dataclass(frozen=True)
class OnlineStep:
    name: str
    fn: Callable[..., Any]
    params: tuple[str, ...]  # the parameters it is called with (defaults are left alone)


def _function(item: Any) -> Any:
    return item.fn if isinstance(item, Component) else item


class OnlinePath:
    """A validated online path of `pipeline` (see the module's docstring)."""

    def __init__(
        self,
        pipeline: Pipeline,
        steps: Mapping[str, Callable[..., Any] | Component | None],
        load: Mapping[str, str] | list[str] | tuple[str, ...] = (),
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self.pipeline = pipeline
        self.load = {name: name for name in load} if not isinstance(load, Mapping) else dict(load)
        self.max_batch = max_batch
        self.steps: list[OnlineStep] = []
        self.record_type: Any = None
        problems: list[str] = []
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            problems.append(f"max_batch={max_batch!r}: must be a whole number >= 1. Fix: e.g. max_batch=64")
        for param, step in self.load.items():
            if step not in pipeline.steps:
                problems.append(
                    f"load: '{param}' comes from step '{step}', which pipeline '{pipeline.name}' does not have. "
                    f"Fix: one of {', '.join(pipeline.steps)}"
                )
        if not steps:
            problems.append("an online path needs at least one step. Fix: e.g. steps={'scores': score_rows}")
        known: list[str] = []
        for name, item in (steps or {}).items():
            fn = _function(item if item is not None else getattr(pipeline.steps.get(name), "component", None))
            if fn is None or not callable(fn):
                problems.append(
                    f"step '{name}': no function. Fix: give one (steps={{'{name}': my_function}}) or name a step "
                    f"of pipeline '{pipeline.name}' ({', '.join(pipeline.steps)}) to reuse its component"
                )
                continue
            params, step_problems = self._wire(name, fn, known)
            problems += step_problems
            self.steps.append(OnlineStep(name, fn, params))
            known.append(name)
        if self.steps and self.record_type is None and not any(p.startswith(f"step '{REQUEST}") for p in problems):
            problems.append(
                f"no step takes the request: give one step a parameter `{REQUEST}: list[Record]` "
                "(Record: a pydantic model of one record)"
            )
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise OnlinePathError(f"online path of pipeline '{pipeline.name}' is invalid:\n{lines}", problems)

    def _wire(self, name: str, fn: Callable[..., Any], known: list[str]) -> tuple[tuple[str, ...], list[str]]:
        problems: list[str] = []
        params: list[str] = []
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # an unresolvable annotation: reported below as untyped
            hints = {}
        for param in inspect.signature(fn).parameters.values():
            if param.name == REQUEST:
                problems += self._request_type(name, hints.get(REQUEST))
            elif param.name not in known and param.name not in self.load:
                if param.default is not inspect.Parameter.empty:
                    continue
                problems.append(
                    f"step '{name}' ({fn.__name__}): parameter '{param.name}' is neither the request "
                    f"('{REQUEST}'), an earlier online step ({', '.join(known) or 'none yet'}), nor a loaded "
                    f"output ({', '.join(self.load) or 'none'}). Fix: add it to load "
                    f"(load={{'{param.name}': '<step of {self.pipeline.name}>'}}), "
                    "or move the step that makes it earlier"
                )
                continue
            params.append(param.name)
        return tuple(params), problems

    def _request_type(self, name: str, hint: Any) -> list[str]:
        args = typing.get_args(hint)
        if typing.get_origin(hint) is not list or len(args) != 1:
            return [
                f"step '{name}': parameter '{REQUEST}' is annotated {hint!r}; it must be `list[Record]` "
                "(Record: a pydantic model of one record), the schema /predict checks"
            ]
        if self.record_type is not None and args[0] is not self.record_type:
            return [f"step '{name}': the request is {args[0]!r} here but {self.record_type!r} in an earlier step"]
        self.record_type = args[0]
        return []

    @property
    def loaded_steps(self) -> tuple[str, ...]:
        """The pipeline steps whose outputs the path reads from a run."""
        return tuple(dict.fromkeys(self.load.values()))

    def run(self, records: list[Any], outputs: Mapping[str, Any]) -> list[Any]:
        """Answer `records` with the outputs of a run (pipeline step -> output)."""
        values: dict[str, Any] = {param: outputs[step] for param, step in self.load.items()}
        values[REQUEST] = records
        result: Any = None
        for step in self.steps:
            result = step.fn(**{p: values[p] for p in step.params})
            values[step.name] = result
        answers = list(result)
        if len(answers) != len(records):
            raise OnlinePathError(
                f"step '{self.steps[-1].name}' returned {len(answers)} answers for {len(records)} records; "
                "the last step must return one per record"
            )
        return answers

    def __repr__(self) -> str:
        chain = " -> ".join([REQUEST, *(s.name for s in self.steps)])
        return f"OnlinePath({self.pipeline.name!r}: {chain}; load {self.load})"

    @classmethod
    def from_yaml(cls, path: str | Path, pipeline: Pipeline | None = None) -> OnlinePath:
        """Read an online path from YAML (see OnlinePathSpec); the pipeline is found by
        name in the current project unless given."""
        path = Path(path)
        try:
            document = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise OnlinePathError(f"cannot read online path {path}: {exc}") from exc
        return cls.from_dict(document, source=str(path), pipeline=pipeline)

    @classmethod
    def from_dict(cls, document: Any, source: str = "<dict>", pipeline: Pipeline | None = None) -> OnlinePath:
        form: list[str] = []  # what the YAML's form gets wrong
        try:
            spec: OnlinePathSpec | None = OnlinePathSpec.model_validate(document)
        except ValidationError as exc:
            form = [
                f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()
            ]
            spec = _without_bad_options(document, exc)  # the rest is checked too, so all is said at once
        built, problems = cls._built(spec, source, pipeline) if spec is not None else (None, [])
        problems = form + problems
        if problems or built is None:
            lines = "\n".join(f"  - {p}" for p in problems)
            fix = f"\nFix: write it in this form:\n{SPEC_FORM}" if form else ""
            raise OnlinePathError(f"{source} is not a valid online path:\n{lines}{fix}", problems)
        return built

    @classmethod
    def _built(
        cls, spec: OnlinePathSpec, source: str, pipeline: Pipeline | None
    ) -> tuple[OnlinePath | None, list[str]]:
        """The path of a well-formed spec, or every problem of it: its pipeline, its steps'
        imports, their wiring."""
        try:
            pipeline = _pipeline_of(spec, source, pipeline)
        except OnlinePathError as exc:
            return None, [str(exc)]
        steps, problems = _imported(spec)
        if problems:  # the wiring of a step that did not import says nothing more
            return None, problems
        try:
            return cls(pipeline, steps, spec.load, spec.max_batch), []
        except OnlinePathError as exc:
            return None, exc.problems or [str(exc)]


def _pipeline_of(spec: OnlinePathSpec, source: str, pipeline: Pipeline | None) -> Pipeline:
    if pipeline is None:
        return _find_pipeline(spec.pipeline)
    if pipeline.name != spec.pipeline:
        raise OnlinePathError(f"{source} is the online path of '{spec.pipeline}', not of '{pipeline.name}'")
    return pipeline


def _imported(spec: OnlinePathSpec) -> tuple[dict[str, Any], list[str]]:
    """Each step's function imported (None: the pipeline's step reused), and the imports that failed."""
    steps: dict[str, Any] = {}
    problems = []
    for name, target in spec.steps.items():
        try:
            steps[name] = import_object(target) if target else None
        except Exception as exc:
            problems.append(f"steps.{name}: {exc}")
    return steps, problems


def _without_bad_options(document: Any, exc: ValidationError) -> OnlinePathSpec | None:
    """The spec without its bad optional keys (load, max_batch, unknown ones), so that its
    pipeline and steps are checked too (a `max_batch: 0` hid a step's typo); None when the
    pipeline or the steps themselves are wrong."""
    failed = {e["loc"][0] for e in exc.errors() if e["loc"]}
    if not isinstance(document, dict) or not failed or failed & {"pipeline", "steps"}:
        return None
    try:
        return OnlinePathSpec.model_validate({k: v for k, v in document.items() if k not in failed})
    except ValidationError:
        return None


class OnlinePathSpec(BaseModel):
    """An online path in YAML:

    pipeline: fraud-risk
    steps:                       # in order; a function's import path, or empty to
      features: flows.fraud_risk.steps:feature_frame    # reuse the pipeline's step
      scores: flows.fraud_risk.steps:score_rows
      decisions: flows.fraud_risk.steps:decide
    load: {risk_model: risk_model, policy: decisions}   # parameter: pipeline step
    max_batch: 64
    """

    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(min_length=1, description="the pipeline's name")
    steps: dict[str, str | None] = Field(min_length=1, description="online step -> function import path")
    load: dict[str, str] = Field(default_factory=dict, description="parameter -> pipeline step of the last run")
    max_batch: int = Field(default=DEFAULT_MAX_BATCH, ge=1, le=10_000)


SPEC_FORM = """\
  pipeline: my-pipeline                      # its name (planflow pipelines)
  steps:                                     # in order: a function's import path, or empty to reuse the step
    features: flows.my_pipeline.steps:feature_rows
    scores:
  load: {model: train}                       # a parameter of the steps: the pipeline step whose output it is
  max_batch: 64                              # records per request, 1 to 10000"""


def _find_pipeline(name: str) -> Pipeline:
    return discovery.get(name)


def find_online_path(target: str) -> OnlinePath:
    """The online path `planflow serve TARGET` answers: a YAML file, or the `online`
    attribute of the module that builds the pipeline named TARGET."""
    if target.endswith((".yaml", ".yml")):
        discovery.use_project_imports()
        return OnlinePath.from_yaml(target)
    pipeline = discovery.get(target)
    module = None if pipeline.source else sys.modules.get(pipeline.module or "")
    online = getattr(module, "online", None)
    if not isinstance(online, OnlinePath):
        where = f"in {pipeline.module}, " if module else ""
        raise OnlinePathError(
            f"pipeline '{target}' ({pipeline.source or pipeline.module}) has no online path. Fix: declare "
            f"`online = OnlinePath(pipeline, steps=..., load=...)` {where}or write one in YAML and serve that "
            f"(planflow serve path/to/online.yaml), in this form:\n{SPEC_FORM}"
        )
    return online
