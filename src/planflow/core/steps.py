"""A pipeline's parts: its steps, where each parameter of a step gets its value, and the
error that lists every problem of a pipeline."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from planflow.core.component import Component, ResourceSpec


class PipelineError(ValueError):
    """A pipeline definition is invalid; the message lists every problem and its fix."""


class _Required:
    """The value of a pipeline parameter that each run must be given (no default):
    `Pipeline(..., params={"path": REQUIRED})`. The flow's parameter then has no default,
    so Prefect's schema marks it required, and a run without it is refused before it starts."""

    _instance: _Required | None = None

    def __new__(cls) -> _Required:  # one of it, also once unpickled
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "REQUIRED"

    def __reduce__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


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


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """ " Did you mean 'x'?" with the known name closest to `name`, or "" when none is close."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def as_step(item: Step | Component) -> Step:
    """A pipeline's entry as a Step (a component alone is a step of the same name)."""
    if isinstance(item, Step):
        return item
    if isinstance(item, Component):
        return Step(name=item.name, component=item)
    raise PipelineError(f"pipeline steps must be components (made with @component) or Step(...); got {item!r}")
