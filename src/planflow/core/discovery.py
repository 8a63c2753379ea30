"""Find the pipelines of the current project.

The project is the folder `planflow.settings.project_root` finds from the current
one (the nearest above it holding `.planflow/`, else `prefect.yaml`, `pyproject.toml`
or `flows/`). Looked up, in order:

- `flows/<name>/flow.py` of the project, attribute `pipeline` (imported as the module
  `flows.<name>.flow`, with the project folder on `sys.path`, as Prefect imports
  deployment entrypoints; `__init__.py` files are optional). A module there without a
  planflow `pipeline` is a plain Prefect flow and is skipped;
- `pipelines/*.yaml` of the project (their `uses:` may name the project's own modules);
- whatever PLANFLOW_PIPELINES lists (comma-separated import paths `pkg.mod:attr` or
  YAML files).

A source that fails to load is reported with its error, not fatal to the rest.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from planflow.core.component import ComponentSpecError
from planflow.core.pipeline import Pipeline, PipelineError, import_object
from planflow.core.source_check import other_component_problems
from planflow.settings import project_root, settings

PIPELINES_ENV = "PLANFLOW_PIPELINES"


class UnknownPipelineError(LookupError):
    """No pipeline has the requested name."""


@dataclass(frozen=True)
class Found:
    name: str
    source: str
    pipeline: Pipeline | None = None
    error: str | None = None


def use_project_imports(root: Path | None = None) -> Path:
    """Put the project folder on `sys.path` (once), so that its own packages import
    as they do under Prefect's workers. Returns the folder."""
    root = (root or project_root()).resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def _project_modules(root: Path) -> list[str]:
    base = root / "flows"
    if not base.is_dir():
        return []
    return [
        f"flows.{folder.name}.flow"
        for folder in sorted(base.iterdir())
        if folder.name.isidentifier() and (folder / "flow.py").is_file()
    ]


def _shadowed(root: Path) -> str | None:
    """Why the project's `flows` package cannot be imported: a module of that name is
    already imported from elsewhere (another project, or a `flows` distribution)."""
    loaded: ModuleType | None = sys.modules.get("flows")
    if loaded is None:
        return None
    places = [Path(p).resolve() for p in getattr(loaded, "__path__", [])]
    if (root / "flows").resolve() in places:
        return None
    where = ", ".join(map(str, places)) or str(getattr(loaded, "__file__", "?"))
    return (
        f"the module 'flows' is already imported from {where}, not from this project's {root / 'flows'}. "
        "Fix: run planflow in its own process from the project folder (or rename the other package)"
    )


def _project_pipeline(module_name: str) -> Pipeline | None:
    """The `pipeline` of a project module; None for a module that holds none (a plain
    Prefect flow)."""
    target = getattr(importlib.import_module(module_name), "pipeline", None)
    return target if isinstance(target, Pipeline) else None


def load_ref(ref: str) -> Pipeline:
    """The pipeline at `ref`: a YAML file, `pkg.mod:attr`, or a module with `pipeline`."""
    if ref.endswith((".yaml", ".yml")):
        return Pipeline.from_yaml(ref)
    target = import_object(ref) if ":" in ref else getattr(importlib.import_module(ref), "pipeline", None)
    if not isinstance(target, Pipeline):
        raise PipelineError(f"'{ref}' does not define a Pipeline (found {type(target).__name__})")
    return target


def _guessed_names(source: str) -> set[str]:
    """Names a pipeline from `source` probably has, to match a request to a load error."""
    if source.endswith((".yaml", ".yml")):
        stem = Path(source).stem
    else:
        parts = source.split(":")[0].split(".")
        stem = parts[-2] if parts[-1] == "flow" and len(parts) > 1 else parts[-1]
    return {stem, stem.replace("_", "-")}


def _failed(source: str, exc: Exception) -> Found:
    error = str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ComponentSpecError) and not source.endswith((".yaml", ".yml")):
        # the module stopped at this component: its others' problems, read from its source
        others = other_component_problems(source.split(":")[0], exc.function)
        if others:
            error += "\nAlso in this module (checked from its source):\n" + "\n".join(others)
    return Found(sorted(_guessed_names(source))[0], source, error=error)


def discover() -> list[Found]:
    root = use_project_imports()
    modules = _project_modules(root)
    yaml_dir = root / "pipelines"
    files = [str(p) for p in sorted(yaml_dir.glob("*.y*ml"))] if yaml_dir.is_dir() else []

    found: list[Found] = []
    shadowed = _shadowed(root) if modules else None
    for module in modules:
        if shadowed:
            found.append(_failed(module, PipelineError(shadowed)))
            continue
        try:
            pipeline = _project_pipeline(module)
        except Exception as exc:  # a user's module may raise anything; report it, go on
            found.append(_failed(module, exc))
            continue
        if pipeline is not None:
            found.append(Found(pipeline.name, module, pipeline))
    for source in [*files, *settings().pipelines]:
        try:
            pipeline = load_ref(source)
        except Exception as exc:
            found.append(_failed(source, exc))
            continue
        found.append(Found(pipeline.name, source, pipeline))
    return _one_per_name(found)


def _origin(pipeline: Pipeline | None) -> object:
    """What a pipeline was built from: its YAML file (read afresh by each source that names
    it: a file in pipelines/ also named in PLANFLOW_PIPELINES, or a module that loads it),
    else the object itself."""
    if pipeline is not None and pipeline.source:
        return pipeline.source  # normalized: relative to the project where it lies in it (source_path)
    return id(pipeline)


def _one_per_name(found: list[Found]) -> list[Found]:
    """Two different pipelines with one name are both refused: Prefect knows a flow by its
    name, so their runs, history and served models would mix, and `planflow run NAME` ran
    whichever was found first, saying nothing. The same pipeline found twice (a module or a
    YAML file also named in PLANFLOW_PIPELINES, a module that loads a YAML file of
    pipelines/) is listed once."""
    sources: dict[str, list[Found]] = {}
    for item in found:
        if item.pipeline is not None:
            sources.setdefault(item.name, []).append(item)
    kept: list[Found] = []
    for item in found:
        same = sources.get(item.name, []) if item.pipeline is not None else []
        distinct = {_origin(other.pipeline) for other in same}
        if len(distinct) <= 1:
            if not same or same[0] is item:
                kept.append(item)
            continue
        others = ", ".join(other.source for other in same if other is not item)
        kept.append(
            Found(
                item.name,
                item.source,
                error=f"pipeline name '{item.name}' is also the name of the pipeline in {others}: Prefect knows a "
                "flow by its name, so their runs and learned durations would mix. Fix: rename one of them "
                "(`name:` of a YAML pipeline, Pipeline(name=...) in Python)",
            )
        )
    return kept


def get(name: str) -> Pipeline:
    """The pipeline called `name`, or an error naming its load error, or the closest
    and all known names."""
    everything = discover()
    for item in everything:
        if item.pipeline is not None and item.name == name:
            return item.pipeline
    for item in everything:
        if item.pipeline is None and name in _guessed_names(item.source) | {item.name}:
            raise PipelineError(f"pipeline '{name}' ({item.source}) failed to load:\n{item.error}")
    names = [i.name for i in everything if i.pipeline is not None]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    broken = [f"  - {i.source}: {_shown(i.error or '')}" for i in everything if i.pipeline is None]
    failed = ("\nThese sources failed to load (one may be it):\n" + "\n".join(broken)) if broken else ""
    raise UnknownPipelineError(
        f"no pipeline named '{name}'.{hint} Known pipelines: {', '.join(names) or '(none)'}. "
        f"See `planflow pipelines`.{failed}"
    )


# Lines of a source's load error the unknown-name message shows (a component's problems, each with its fix)
ERROR_LINES_SHOWN = 8


def _shown(error: str) -> str:
    """A load error as the unknown-name message shows it: whole up to ERROR_LINES_SHOWN
    lines (a ComponentSpecError's first line ends with a colon, its problems follow)."""
    lines = error.splitlines() or [""]
    more = len(lines) - ERROR_LINES_SHOWN
    shown = lines[:ERROR_LINES_SHOWN] + ([f"... ({more} more lines: `planflow pipelines`)"] if more > 0 else [])
    return "\n      ".join(shown)
