"""One block document (a YAML mapping of `type`, `name` and a block's fields), checked
by a pydantic model with `extra="forbid"` made from the block class's own fields, so
the bounds, defaults and descriptions are written once, on the block."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from prefect.blocks.core import Block
from prefect.types.names import BlockDocumentName
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from planflow.prefect.blocks.alert_route import AlertRoute, route_name
from planflow.prefect.blocks.explain import did_you_mean, explain
from planflow.prefect.blocks.planner_settings import PlannerSettings
from planflow.prefect.blocks.registry import DEFAULT_SETTINGS
from planflow.prefect.blocks.resource_pool import ResourcePool, local_pool_from_machine

BLOCK_TYPES: dict[str, type[Block]] = {
    block.get_block_type_slug(): block for block in (ResourcePool, PlannerSettings, AlertRoute)
}
MACHINE = "machine"  # a ResourcePool capacity sized from the machine that applies the folder
MACHINE_FIELDS = ("cpu", "gpu", "mem_gib")


def _document_model(block: type[Block]) -> type[BaseModel]:
    """The block's own fields (types, bounds, defaults, descriptions), refusing any other."""
    fields: dict[str, Any] = {name: (info.annotation, info) for name, info in block.model_fields.items()}
    return create_model(f"{block.__name__}Document", __config__=ConfigDict(extra="forbid"), **fields)


MODELS: dict[str, type[BaseModel]] = {slug: _document_model(block) for slug, block in BLOCK_TYPES.items()}
_NAME = TypeAdapter(BlockDocumentName)


@dataclass(frozen=True)
class BlockDocument:
    """One checked document: where it was written, and the block it states."""

    source: str  # file:line
    name: str
    block: Block
    from_machine: tuple[str, ...] = ()  # fields written as `machine`

    @property
    def slug(self) -> str:
        return self.block.get_block_type_slug()

    @property
    def ref(self) -> str:
        """How Prefect names a block: `slug/name` (as in `prefect block inspect`)."""
        return f"{self.slug}/{self.name}"

    def data(self) -> dict[str, Any]:
        return self.block.model_dump(mode="json", include=set(type(self.block).model_fields))


@dataclass
class Parsed:
    """What one YAML document says, checked: the block, or every problem found."""

    source: str
    slug: Any = None
    name: Any = None
    document: BlockDocument | None = None
    problems: list[str] = field(default_factory=list)
    backup_pool: Any = None  # a ResourcePool's, as written: checked beside its other problems

    @property
    def ref(self) -> str | None:
        """`slug/name` when both are written as strings (even when fields are wrong)."""
        return f"{self.slug}/{self.name}" if isinstance(self.slug, str) and isinstance(self.name, str) else None


@cache
def _machine() -> ResourcePool:
    return local_pool_from_machine()


def _kebab(name: object) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", str(name).lower()).strip("-")


def _name_rules(block_type: type[Block], name: str, fields: dict[str, Any]) -> list[str]:
    """What the readers of each block type require of a document's name."""
    if block_type is PlannerSettings and name != DEFAULT_SETTINGS:
        return [
            f"the planner reads only the PlannerSettings named '{DEFAULT_SETTINGS}', so {name!r} would never be "
            f"used. Fix: name it '{DEFAULT_SETTINGS}'"
        ]
    alertname = fields.get("alertname")
    if block_type is AlertRoute and isinstance(alertname, str) and name != route_name(alertname):
        return [
            f"the route of alert {alertname!r} is read from the document named {route_name(alertname)!r}, "
            f"not {name!r}. Fix: name it {route_name(alertname)!r}"
        ]
    if block_type is ResourcePool and fields.get("backup_pool") == name:
        return [f"backup_pool={name!r} is the pool itself. Fix: name another ResourcePool, or leave it out"]
    return []


def _head_problems(slug: Any, name: Any) -> list[str]:
    problems = []
    if not (isinstance(slug, str) and slug in BLOCK_TYPES):
        written = "has no `type`" if slug is None else f"type {slug!r} is not a planflow block type"
        problems.append(f"{written}.{did_you_mean(str(slug), BLOCK_TYPES)} Fix: use one of {', '.join(BLOCK_TYPES)}")
    if name is None:
        problems.append("has no `name`. Fix: add `name:`, the block document's name")
        return problems
    try:
        _NAME.validate_python(name)
    except ValidationError as exc:
        reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        problems.append(f"name={name!r}: {reason.rstrip('.')}. Fix: e.g. {_kebab(name)!r}")
    return problems


def parse(source: str, data: Any) -> Parsed:
    """Check one YAML document; `machine` capacities are sized from this machine."""
    if not isinstance(data, dict):
        return Parsed(
            source,
            problems=[
                f"{source}: a block document is a mapping of `type`, `name` and the block's fields, not a "
                f"{type(data).__name__} ({str(data)[:60]}). Fix: write `type: ...`, `name: ...` and the fields"
            ],
        )
    fields = dict(data)
    parsed = Parsed(source, fields.pop("type", None), fields.pop("name", None))
    label = f"{source} {parsed.slug or '?'}/{parsed.name or '?'}"
    problems = _head_problems(parsed.slug, parsed.name)
    block_type = BLOCK_TYPES.get(parsed.slug) if isinstance(parsed.slug, str) else None
    checked = None
    if block_type is ResourcePool:
        parsed.backup_pool = fields.get("backup_pool")
    if block_type is not None:
        if parsed.name is not None:
            problems += _name_rules(block_type, str(parsed.name), fields)
        machine_fields = MACHINE_FIELDS if block_type is ResourcePool else ()
        machine = tuple(f for f in machine_fields if fields.get(f) == MACHINE)
        try:
            checked = MODELS[parsed.slug].model_validate(fields | {f: getattr(_machine(), f) for f in machine})
        except ValidationError as exc:
            problems += [explain(error, block_type, machine_fields) for error in exc.errors()]
    parsed.problems = [f"{label}: {problem}" for problem in problems]
    if not parsed.problems and block_type is not None and checked is not None:
        parsed.document = BlockDocument(source, str(parsed.name), block_type(**checked.model_dump()), machine)
    return parsed
