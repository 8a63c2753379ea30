"""Find the pipelines a project has.

Looked up, in order: the example pipelines (`flows/<name>/flow.py`, attribute
`pipeline`), YAML files in `<project>/pipelines/*.yaml`, and whatever
PLANFLOW_PIPELINES lists (comma-separated import paths `pkg.mod:attr`
or YAML files). A source that fails to load is reported, not fatal to the rest.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path

import flows
from flows.pipeline import Pipeline, PipelineError, import_object
from planflow.config import project_root


class UnknownPipelineError(LookupError):
    """No pipeline has the requested name."""


@dataclass(frozen=True)
class Found:
    name: str
    source: str
    pipeline: Pipeline | None = None
    error: str | None = None


def _example_modules() -> list[str]:
    base = Path(list(flows.__path__)[0])
    return [
        f"flows.{info.name}.flow"
        for info in pkgutil.iter_modules([str(base)])
        if info.ispkg and (base / info.name / "flow.py").exists()
    ]


def _load_module_pipeline(path: str) -> Pipeline:
    if ":" in path:
        target = import_object(path)
    else:
        target = getattr(importlib.import_module(path), "pipeline", None)
    if not isinstance(target, Pipeline):
        raise PipelineError(f"'{path}' does not define a Pipeline (found {type(target).__name__})")
    return target


def discover() -> list[Found]:
    sources: list[tuple[str, str]] = [("module", m) for m in _example_modules()]
    yaml_dir = project_root() / "pipelines"
    if yaml_dir.is_dir():
        sources += [("yaml", str(p)) for p in sorted(yaml_dir.glob("*.y*ml"))]
    for extra in filter(None, (s.strip() for s in os.environ.get("PLANFLOW_PIPELINES", "").split(","))):
        sources.append(("yaml" if extra.endswith((".yaml", ".yml")) else "module", extra))

    found: list[Found] = []
    for kind, source in sources:
        try:
            pipeline = Pipeline.from_yaml(source) if kind == "yaml" else _load_module_pipeline(source)
        except (PipelineError, ImportError, ValueError) as exc:
            found.append(Found(Path(source).stem if kind == "yaml" else source, source, error=str(exc)))
            continue
        found.append(Found(pipeline.name, source, pipeline))
    return found


def get(name: str) -> Pipeline:
    """The pipeline called `name`, or an error naming the closest and all known ones."""
    everything = discover()
    for item in everything:
        if item.name == name:
            if item.pipeline is None:
                raise PipelineError(f"pipeline '{name}' ({item.source}) failed to load:\n{item.error}")
            return item.pipeline
    names = [i.name for i in everything if i.pipeline is not None]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UnknownPipelineError(
        f"no pipeline named '{name}'.{hint} Known pipelines: {', '.join(names) or '(none)'}. "
        "See `planflow pipelines`."
    )
