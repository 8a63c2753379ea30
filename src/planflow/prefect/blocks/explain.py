"""A pydantic error about a block document, said as the field, the value and the fix."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable
from typing import Any

from prefect.blocks.core import Block


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """ " Did you mean 'cpu'?" for the closest choice, else "" (to follow a sentence)."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _choices(annotation: Any) -> list[str]:
    """The values of a Literal field (also inside `Literal[...] | None`)."""
    if typing.get_origin(annotation) is typing.Literal:
        return [str(value) for value in typing.get_args(annotation)]
    return [choice for arg in typing.get_args(annotation) for choice in _choices(arg)]


def explain(error: dict[str, Any], block: type[Block], machine_fields: Iterable[str] = ()) -> str:
    """One pydantic error of a document of `block` as a sentence with its fix:

    - unknown field: its name, the closest field, and the fields the block takes;
    - missing field: its name and what it means;
    - bad value: the field, the value, what pydantic wants, and the closest choice.
    """
    field = ".".join(str(part) for part in error["loc"])
    fields = block.model_fields
    slug = block.get_block_type_slug()
    if error["type"] == "extra_forbidden":
        takes = ", ".join(fields)
        return f"unknown field {field!r}.{did_you_mean(field, fields)} Fix: rename or remove it; {slug} takes {takes}"
    info = fields.get(str(error["loc"][0]))
    about = f" ({field}: {info.description})" if info is not None and info.description else ""
    if error["type"] == "missing":
        return f"field {field!r} is missing{about}. Fix: add `{field}: <value>`"
    value = error.get("input")
    hint = did_you_mean(str(value), _choices(info.annotation)) if info is not None else ""
    wanted = str(error["msg"]).removeprefix("Input should be ").split(", unable")[0]
    if wanted.startswith(("greater", "less")):
        wanted = f"a value {wanted}"
    machine = f", or `machine` (this machine's {field})" if field in set(machine_fields) else ""
    return f"{field}={value!r}: {error['msg']}.{hint}{about} Fix: set {field} to {wanted}{machine}"
