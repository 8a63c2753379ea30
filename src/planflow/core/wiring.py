"""How a pipeline's steps connect, checked when it is built: each parameter's source
(an upstream step, a pipeline parameter, a fixed value), the steps a step names, the
pipeline-wide cache, and an order that keeps declaration order wherever the graph allows.

Each check returns its problems (messages with their fix) rather than raising, so that
Pipeline lists every problem at once.
"""

from __future__ import annotations

import graphlib
import heapq
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from planflow.core.caching import CACHE_MODES
from planflow.core.steps import Binding, Step, did_you_mean


def wire(
    steps: Mapping[str, Step], declared: Mapping[str, Any]
) -> tuple[dict[str, dict[str, Binding]], dict[str, Any], list[str]]:
    """Each step's bindings (parameter -> where its value comes from), the pipeline's
    parameters (the functions' defaults, then `declared`), and the problems."""
    problems: list[str] = []
    defaults: dict[str, tuple[Any, str]] = {}
    all_bindings: dict[str, dict[str, Binding]] = {}
    for step in steps.values():
        signature = inspect.signature(step.component.fn)
        names = list(signature.parameters)
        for param in step.inputs:
            if param not in signature.parameters:
                problems.append(
                    f"step '{step.name}' maps input '{param}', but its function takes "
                    f"({', '.join(names)}).{did_you_mean(param, names)}"
                )
        for param in step.params:
            if param not in signature.parameters:
                problems.append(
                    f"step '{step.name}' sets parameter '{param}', but its function takes "
                    f"({', '.join(names)}).{did_you_mean(param, names)}"
                )
        bindings: dict[str, Binding] = {}
        for pname, param in signature.parameters.items():
            if pname in step.inputs:
                bindings[pname] = Binding("step", step.inputs[pname])
            elif pname in step.params:
                bindings[pname] = Binding("fixed", step.params[pname])
            elif pname in steps and pname != step.name:
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
                    f"gives no default.{did_you_mean(pname, steps)} Fix: map it with "
                    f"inputs={{'{pname}': '<step>'}}, or add '{pname}' to the pipeline's params"
                )
        all_bindings[step.name] = bindings
    params = {name: value for name, (value, _) in defaults.items()}
    used = {b.source for bs in all_bindings.values() for b in bs.values() if b.kind == "param"}
    for pname in declared:
        if pname not in used:
            problems.append(
                f"pipeline parameter '{pname}' is not used by any step."
                f"{did_you_mean(pname, used)} Fix: remove it or name it as a step parameter"
            )
    params.update(declared)
    return all_bindings, params, problems


def dependency_problems(steps: Mapping[str, Step], known: Iterable[str] | None = None) -> list[str]:
    """The steps that `after:` or `inputs:` name but the pipeline does not have (`known`:
    the step names it has, when some of them are not in `steps`)."""
    known = list(steps) if known is None else list(known)
    problems = []
    for step in steps.values():
        referenced = [("after", dep) for dep in step.after] + [
            (f"inputs.{param}", source) for param, source in step.inputs.items()
        ]
        for where, dep in referenced:
            if dep not in known:
                problems.append(
                    f"step '{step.name}' {where} names unknown step '{dep}'."
                    # not the step itself: `after: [totl]` on step `total` was asked "Did you mean 'total'?"
                    f"{did_you_mean(dep, [k for k in known if k != step.name])} Known steps: {', '.join(known)}"
                )
    return problems


def apply_cache_default(steps: dict[str, Step], cache: str | None) -> list[str]:
    """A pipeline-wide `cache` for the components that declare none (`cache_mode` None)."""
    if cache is None:
        return []
    if cache not in CACHE_MODES:
        return [f"cache={cache!r}: must be one of {', '.join(CACHE_MODES)}. Fix: e.g. Pipeline(..., cache='inputs')"]
    for name, step in steps.items():
        if step.component.cache_mode is None:
            steps[name] = replace(step, component=step.component.with_cache(cache))
    return []


def stable_order(graph: Mapping[str, tuple[str, ...]], declared: list[str]) -> list[str]:
    """A topological order of `graph` (each step -> the steps it waits for) that keeps
    declaration order wherever the graph allows: of the steps ready at each point, the
    one declared first comes first. Raises graphlib.CycleError when there is none."""
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    position = {name: index for index, name in enumerate(declared)}
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


def cycle_problem(graph: Mapping[str, tuple[str, ...]], declared: list[str]) -> tuple[list[str], str | None]:
    """(stable_order of `graph`, None), or ([], the problem naming its cycle)."""
    try:
        return stable_order(graph, declared), None
    except graphlib.CycleError as exc:
        return [], (
            f"cycle: {' -> '.join(readable_cycle(exc.args[1], declared))}. Fix: remove one of these "
            "dependencies (an `after:` entry or an input named after a downstream step)"
        )


def step_graph(steps: Mapping[str, Step], bindings: Mapping[str, Mapping[str, Binding]]) -> dict[str, tuple[str, ...]]:
    """Each step -> the steps among `steps` it waits for (its inputs' steps, its `after:`)."""
    return {
        name: tuple(
            d
            for d in dict.fromkeys(
                [*(b.source for b in bindings.get(name, {}).values() if b.kind == "step"), *step.after]
            )
            if d in steps
        )
        for name, step in steps.items()
    }


def readable_cycle(cycle: list[str], declared: list[str]) -> list[str]:
    """graphlib's cycle (each step before the one that waits for it, first repeated
    last), turned to start at the step declared first, so the message is stable."""
    nodes = list(cycle[:-1]) or list(cycle)
    first = min(range(len(nodes)), key=lambda i: declared.index(nodes[i]))
    nodes = nodes[first:] + nodes[:first]
    return [*nodes, nodes[0]]
