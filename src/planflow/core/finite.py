"""Where a value holds a float NaN or infinity, which JSON (a flow run's parameters, an
HTTP answer) cannot carry.

    >>> non_finite_at({"a": [1.0, float("inf")]})
    ('a[1]', inf)
    >>> non_finite_at({"a": 1.0}) is None
    True
"""

from __future__ import annotations

import math
from typing import Any

from pydantic_core import PydanticSerializationError, to_jsonable_python


def non_finite_at(value: Any) -> tuple[str, float] | None:
    """(where, the number) of a NaN or infinity in `value` (lists, mappings, models,
    dataclasses; `where` as `a.b[2]`, "" for the value itself), or None when it holds none
    or is not data that serializes."""
    try:
        plain = to_jsonable_python(value)
    except (TypeError, ValueError, PydanticSerializationError):
        return None
    stack: list[tuple[str, Any]] = [("", plain)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where, item
        if isinstance(item, dict):
            stack.extend((f"{where}.{key}" if where else str(key), v) for key, v in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))
    return None
