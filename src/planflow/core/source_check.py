"""The components of a module that stopped at one of them, checked from its source.

A component's problems are found when it is declared (`@component(...)` raises
ComponentSpecError listing all of *its* problems), so a module with two broken components
stops at the first, and the second's problems showed only once the first was fixed. When
a module fails that way, discovery reads its source (nothing more of it runs) and checks
every other component declared there whose options are literals: the same checks as at
declaration (spec_problems), and for a decorated function, that its parameters and its
return value are typed. Options that are not literals (a constant, an expression) are
left to the declaration itself.

    extra = other_component_problems("flows.bad.flow", failed="step_a")  # the failed one's function
    # ["component 'step_b' (line 17) has 1 problem:\n  - unknown key 'cpus'. Did you mean 'cpu'? ..."]
"""

from __future__ import annotations

import ast
import importlib.util
from typing import Any

from planflow.core.component import problems_text, spec_problems, typing_problems

MAX_SOURCE_BYTES = 2_000_000  # a module larger than this is not read (it is not a pipeline's wiring)


def other_component_problems(module_name: str, failed: str | None) -> list[str]:
    """One text per component of `module_name` (but the one of function `failed`) whose
    literal options or signature have problems; [] when the source cannot be found or parsed."""
    tree = _parse(module_name)
    if tree is None:
        return []
    found = []
    for node in ast.walk(tree):
        for name, function_name, call, function in _declarations(node):
            if function_name == failed:
                continue
            values = _literal_options(call)
            if values is None:
                continue
            problems = spec_problems(values) + (_signature_problems(function) if function is not None else [])
            if problems:
                found.append((call.lineno, problems_text(f"component '{name}' (line {call.lineno})", problems)))
    return [text for _, text in sorted(found)]


def _parse(module_name: str) -> ast.Module | None:
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec is not None else None
    if not origin or not origin.endswith(".py"):
        return None
    try:
        with open(origin, "rb") as source:
            text = source.read(MAX_SOURCE_BYTES + 1)
        if len(text) > MAX_SOURCE_BYTES:
            return None
        return ast.parse(text, filename=origin)
    except (OSError, SyntaxError, ValueError):
        return None


def _is_component(func: ast.expr) -> bool:
    """`component` or `<something>.component` (planflow.component)."""
    return (isinstance(func, ast.Name) and func.id == "component") or (
        isinstance(func, ast.Attribute) and func.attr == "component"
    )


_Declared = tuple[str, str, ast.Call, ast.FunctionDef | ast.AsyncFunctionDef | None]


def _declarations(node: ast.AST) -> list[_Declared]:
    """(component name, its function's name, the `component(...)` call, the decorated
    function or None) of each component declared at `node`."""
    out: list[_Declared] = []
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and _is_component(decorator.func) and not decorator.args:
                out.append((_named(decorator) or node.name, node.name, decorator, node))
    elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and _is_component(node.value.func):
        call = node.value
        if call.args:  # `x = component(fn, ...)`: the function is elsewhere, its options are here
            target = call.args[0]
            function_name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
            if function_name:
                out.append((_named(call) or function_name, function_name, call, None))
    return out


def _named(call: ast.Call) -> str | None:
    """The literal `name=` option of a call, if any."""
    for keyword in call.keywords:
        if keyword.arg == "name" and isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, str):
            return keyword.value.value
    return None


def _literal_options(call: ast.Call) -> dict[str, Any] | None:
    """The call's keyword options, when every one is a literal (None otherwise: **kwargs,
    a constant, an expression are the declaration's to check)."""
    values: dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            return None
        try:
            values[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    return values


def _signature_problems(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """What signature_problems says of the function, read from its source."""
    a = function.args
    params = [(arg.arg, False, arg.annotation is not None) for arg in [*a.posonlyargs, *a.args]]
    params += [(a.vararg.arg, True, True)] if a.vararg else []
    params += [(arg.arg, False, arg.annotation is not None) for arg in a.kwonlyargs]
    params += [(a.kwarg.arg, True, True)] if a.kwarg else []
    return typing_problems(params, function.returns is not None)
