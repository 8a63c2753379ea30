"""A pipeline file loaded: read, checked against its YAML form (pipeline_file.py), and
each step's `uses:` imported, with every problem of the file listed at once.

`pipeline_arguments` gives what Pipeline(...) is built with; Pipeline.from_yaml and
Pipeline.from_dict build it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from pydantic import ValidationError

from planflow.core.component import Component, ComponentSpecError, make_component
from planflow.core.pipeline_file import PIPELINE_FIELDS, PipelineSpec, StepSpec, show, spec_problems, step_label
from planflow.core.steps import REQUIRED, PipelineError, Step, did_you_mean
from planflow.core.wiring import cycle_problem, dependency_problems, step_graph, wire
from planflow.settings import project_root


def read_yaml(path: Path) -> Any:
    """The document of a pipeline file; PipelineError when it is not YAML."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML: {exc}") from exc


def pipeline_arguments(document: Any, source: str) -> dict[str, Any]:
    """The keyword arguments of Pipeline(...) for a pipeline's YAML form; every problem
    of the document, its fields and its steps' imports, listed at once (PipelineError)."""
    if not isinstance(document, dict):
        raise PipelineError(
            f"{source}: expected a mapping with {', '.join(PIPELINE_FIELDS)}, got {show(document)}. "
            "Fix: e.g. `name: my-pipeline` and `steps: [{uses: 'package.module:component'}]`"
        )
    problems: list[tuple[int, str]] = []  # (step index, -1 for the pipeline; message)
    spec: PipelineSpec | None = None
    try:
        spec = PipelineSpec.model_validate(document)
    except ValidationError as exc:
        problems += spec_problems(exc, document)
    steps, step_problems = build_steps(document, spec)
    problems = sorted(problems + step_problems, key=lambda problem: problem[0])
    if problems:  # the wiring of the steps that did build, in the same listing
        problems += [(len(steps) + len(problems), p) for p in _wiring_problems(document, steps)]
    if problems or spec is None:
        lines = "\n".join(f"  - {message}" for _, message in problems)
        raise PipelineError(f"{source}: pipeline '{document.get('name', '?')}' is invalid:\n{lines}")
    return {
        "name": spec.name or Path(source).stem,
        "steps": steps,
        "params": {**spec.params, **dict.fromkeys(spec.required, REQUIRED)},
        "description": spec.description,
        "retries": spec.retries,
        "isolation": spec.isolation,
        "cache": spec.cache,
    }


def source_path(source: str) -> str:
    """A pipeline file's path as another process finds it: relative to the project where
    it lies inside it (workers run from the project folder, which has another path inside
    a container)."""
    path, root = Path(source).resolve(), project_root()
    return str(path.relative_to(root) if path.is_relative_to(root) else path)


def importable_name(module: ModuleType) -> str:
    """The name another process imports `module` by. Its own, unless it was loaded from its
    file under another name: Prefect loads a deployment's entrypoint file as a module named
    after the file (`flow`, `__prefect_loader_<hash>__`), which no other process can import
    (a distributed run's components failed: "No module named 'flow'"). Such a module of the
    project is named by its place in the project's folders (`flows.churn.flow`), as
    discovery imports it (`__init__.py` files optional: folders without one import as
    namespace packages, the project folder being on `sys.path`)."""
    name, file = module.__name__, getattr(module, "__file__", None)
    if not file:
        return name
    path, root = Path(file).resolve(), project_root()
    if not path.is_relative_to(root) or path.suffix != ".py":
        return name
    parts = path.relative_to(root).with_suffix("").parts
    parts = parts[:-1] if parts and parts[-1] == "__init__" else parts
    if not parts or not all(part.isidentifier() for part in parts):
        return name
    dotted = ".".join(parts)
    # renamed only where the name is the file's own (a tail of its path) or Prefect's loader's
    loaded_by_file = dotted.endswith(f".{name}") or name.startswith("__prefect_loader_")
    return dotted if loaded_by_file else name


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
        raise PipelineError(f"module '{module_name}' has no '{attribute}'.{did_you_mean(attribute, names)}") from None


def build_steps(document: Mapping[str, Any], spec: PipelineSpec | None) -> tuple[list[Step], list[tuple[int, str]]]:
    """The steps of a pipeline file, importing what each `uses:`; with the problems of
    those imports and resource overrides (a step whose fields are invalid is still
    imported, so that its import problem shows in the same listing)."""
    steps: list[Step] = []
    problems: list[tuple[int, str]] = []
    raw_steps = document.get("steps") if isinstance(document.get("steps"), list) else []
    for index, raw in enumerate(raw_steps):
        label = step_label(index, raw)
        try:
            steps.append(_build_step(spec.steps[index] if spec is not None else StepSpec.model_validate(raw)))
        except ValidationError:  # already described by spec_problems
            uses = raw.get("uses") if isinstance(raw, dict) else None
            resources = raw.get("resources") if isinstance(raw, dict) else None
            try:
                if isinstance(uses, str):
                    target = import_object(uses)
                    if isinstance(resources, dict) and resources:
                        _with_resources(target, resources, uses)
            except (PipelineError, ComponentSpecError) as exc:
                problems.append((index, f"{label}: {_indented(exc)}"))
        except (PipelineError, ComponentSpecError) as exc:
            problems.append((index, f"{label}: {_indented(exc)}"))
    return steps, problems


def _indented(exc: Exception) -> str:
    return str(exc).replace("\n  - ", "\n      - ")  # the component's own list, indented


def _wiring_problems(document: Mapping[str, Any], steps: list[Step]) -> list[str]:
    """The wiring problems (parameters, inputs, `after:`) among the steps that built,
    leaving out those that a step that did not build may explain: a problem naming it,
    and, while one did not, a pipeline parameter no built step uses."""
    built = {step.name: step for step in steps}
    raw_steps = document.get("steps") if isinstance(document.get("steps"), list) else []
    failed = {_raw_name(raw) for raw in raw_steps} - set(built) - {None}
    declared = document.get("params") if isinstance(document.get("params"), dict) else {}
    known = [*built, *sorted(failed - set(built))]
    try:
        bindings, _, wiring = wire(built, declared)
        unknown = dependency_problems(built, known)  # the failed steps count as known
        # a cycle among them: reported only once the other problems were fixed, before
        cycle = cycle_problem(step_graph(built, bindings), list(built))[1]
    except Exception:  # noqa: BLE001 - a partial pipeline's wiring is a bonus to the listing above
        return []
    return (
        [
            problem
            for problem in wiring
            if not any(f"'{name}'" in problem for name in failed)
            and not (failed and "is not used by any step" in problem)
        ]
        + unknown
        + ([cycle] if cycle else [])
    )


def _raw_name(raw: Any) -> str | None:
    """The name a step of the file would have: its `name:`, else what its `uses:` names."""
    if not isinstance(raw, dict):
        return None
    if isinstance(raw.get("name"), str):
        return raw["name"]
    uses = raw.get("uses")
    if not isinstance(uses, str):
        return None
    try:  # imported already by build_steps: a component's own name (@component(name=...))
        target = import_object(uses)
    except PipelineError:
        target = None
    return target.name if isinstance(target, Component) else uses.replace(":", ".").rsplit(".", 1)[-1]


def _with_resources(target: Any, resources: Mapping[str, Any], uses: str) -> Component:
    """`target` (a component or a plain function) with the step's `resources:` applied;
    their problems are named as the step's `resources:`."""
    try:
        if isinstance(target, Component):
            return target.with_spec(**resources)
        return make_component(target, **resources)
    except ComponentSpecError as exc:
        raise ComponentSpecError(f"its `resources:` on '{uses}': {exc}") from None
    except TypeError as exc:  # e.g. a key that is not a string
        raise ComponentSpecError(f"its `resources:` on '{uses}': {exc}. Fix: name each value by its key") from None


def _build_step(spec: StepSpec) -> Step:
    target = import_object(spec.uses)
    if isinstance(target, Component) and not spec.resources:
        component = target
    elif callable(target):
        component = _with_resources(target, spec.resources, spec.uses)
    else:
        raise PipelineError(
            f"'{spec.uses}' is a {type(target).__name__}, neither a component nor a function. "
            "Fix: point `uses:` at a function decorated with @component, or a plain typed function"
        )
    name = spec.name or component.name
    if name != component.name:
        component = component.with_options(name=name)
    return Step(name=name, component=component, after=tuple(spec.after), inputs=spec.inputs, params=spec.params)
