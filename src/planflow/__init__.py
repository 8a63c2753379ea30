"""planflow: plan, run, watch and heal AI pipelines on Prefect 3.

What a team imports, from one place:

    from planflow import component, Pipeline, Step, to_flow

    @component(cpu=2, mem_gib=4, est_seconds=30)
    def features(rows: int = 1000) -> list[float]: ...

    pipeline = Pipeline("my-pipeline", [features])
    my_pipeline = to_flow(pipeline)      # a Prefect flow: deploy it, or call it

Everything else (planflow.core, .planner, .runtime, .prefect, .monitoring,
.remediation, .ops, .dashboards, .cli) is internal and may change.

The names are resolved on first use (PEP 562), so that `import planflow.planner`, which
is pure Python and PuLP, does not import Prefect through this module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_PUBLIC = {
    "Component": "planflow.core.component",
    "ComponentSpecError": "planflow.core.component",
    "ResourceSpec": "planflow.core.component",
    "component": "planflow.core.component",
    "Pipeline": "planflow.core.pipeline",
    "PipelineError": "planflow.core.pipeline",
    "Step": "planflow.core.pipeline",
    "REQUIRED": "planflow.core.steps",
    "UnknownPipelineError": "planflow.core.discovery",
    "OnlinePath": "planflow.serving.path",
    "OnlinePathError": "planflow.serving.path",
    "InfeasibleError": "planflow.planner",
    "PlanningError": "planflow.planner",
    "PipelineRunError": "planflow.runtime.runner",
    "to_flow": "planflow.runtime.flow",
}
__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from planflow.core.component import Component, ComponentSpecError, ResourceSpec, component  # noqa: F401
    from planflow.core.discovery import UnknownPipelineError  # noqa: F401
    from planflow.core.pipeline import Pipeline, PipelineError, Step  # noqa: F401
    from planflow.core.steps import REQUIRED  # noqa: F401
    from planflow.planner import InfeasibleError, PlanningError  # noqa: F401
    from planflow.runtime.flow import to_flow  # noqa: F401
    from planflow.runtime.runner import PipelineRunError  # noqa: F401
    from planflow.serving.path import OnlinePath, OnlinePathError  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'planflow' has no attribute {name!r}. Public names: {', '.join(__all__)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
