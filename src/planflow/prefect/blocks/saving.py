"""Saving a block document without registering its type and schema at every save.

Prefect's `Block.save` registers the block's type and schema before it writes (two or
three requests: read the type, maybe update it, read the schema by checksum), at every
call. A run writes its calendar entry on its way to its first component, under the
planning slot every other run waits for: there the type and schema are registered once
per process and server (the first save), and each later save is one request.

    >>> save_once_registered(entry, "run-1234")   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL

_FIELDS = {"name", "block_schema_id", "block_type_id", "data", "is_anonymous"}
# (block class, API URL) whose type and schema this process registered
_registered: set[tuple[type, str]] = set()


def register_once(cls: type[Block]) -> None:
    """Register `cls`'s type and schema with this server, once per process: a run does it
    beside its other reads (run_reads.py), so that its calendar entry's first save, under
    the planning slot every other run waits for, is one request, not four (each process
    of a work pool's flow run is new: the fleet benchmark's runs all paid it there)."""
    key = (cls, str(PREFECT_API_URL.value() or ""))
    if key in _registered and cls._block_type_id is not None and cls._block_schema_id is not None:
        return
    try:
        cls.register_type_and_schema()
    except ObjectAlreadyExists:
        # Prefect reads the type, then creates it when missing: runs starting together on a
        # new server (a test's fleet) race between the two. The winner's type is there now.
        cls.register_type_and_schema()
    _registered.add(key)


def save_once_registered(block: Block, name: str, data: dict[str, Any] | None = None) -> UUID:
    """Save `block` as document `name` (overwriting one of that name); its type and schema
    are registered only at the first save of its class to this server in this process.
    `data`: the document's data when the caller has it (a block without secrets), sparing
    Block._to_block_document (its schema and a dump: 0.1-0.3 s for a 400-row entry)."""
    cls = type(block)
    key = (cls, str(PREFECT_API_URL.value() or ""))
    if key in _registered and cls._block_type_id is not None and cls._block_schema_id is not None:
        if data is None:
            document = block._to_block_document(name=name, include_secrets=True)
            create = BlockDocumentCreate(**document.model_dump(include=_FIELDS))
        else:
            create = BlockDocumentCreate(
                name=name, block_schema_id=cls._block_schema_id, block_type_id=cls._block_type_id, data=data
            )
        try:
            with get_client(sync_client=True) as client:
                document = client.create_block_document(block_document=create)
        except ObjectAlreadyExists:
            pass  # e.g. the entry of a retried flow run: Block.save overwrites it below
        except (ObjectNotFound, PrefectHTTPStatusError):
            _registered.discard(key)  # the type or schema is gone (a new server at this address)
        else:
            block._block_document_name, block._block_document_id = document.name, document.id
            return document.id
    register_once(cls)  # registered before Block.save registers it again: no race left for it to meet
    document_id = block.save(name, overwrite=True)
    _registered.add(key)
    return document_id
