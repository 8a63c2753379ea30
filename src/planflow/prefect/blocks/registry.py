"""Register planflow's block types and read the pools the planner plans over.

A run reads its pools and its settings in one request (`read_run_blocks`): a block
document read costs the server about 12 ms whether it returns one document or ten
(measured on an idle SQLite server: 12.4 ms for the settings by name, 12.8 ms for the
pools, 12.9-14.2 ms for both together), against 3-4 ms for the other reads before a plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import BlockDocument
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

from planflow.prefect.blocks.alert_route import AlertRoute, ensure_routes
from planflow.prefect.blocks.planner_settings import PlannerSettings
from planflow.prefect.blocks.resource_pool import ResourcePool, local_pool_from_machine
from planflow.prefect.event_watch import KeptRead

DEFAULT_POOL = "local"
DEFAULT_SETTINGS = "default"
# what a kept read of blocks watches: a document created, updated or deleted, and a block
# type deleted (its documents go with it, with no event of their own)
BLOCK_EVENTS = ("prefect.block-document.", "prefect.block-type.")


def register() -> list[str]:
    """Register the block types with the Prefect server (idempotent)."""
    for block in (ResourcePool, PlannerSettings, AlertRoute):
        block.register_type_and_schema()
    return [ResourcePool.get_block_type_slug(), PlannerSettings.get_block_type_slug(), AlertRoute.get_block_type_slug()]


def ensure_defaults(routes: bool = True) -> dict[str, bool]:
    """Register the types, then create the `local` pool, the default settings and (with
    `routes`) the default AlertRoute of each alert when missing. Existing documents are
    left as the user edited them. Returns document name -> created."""
    register()
    created = {}
    if routes:
        created.update(ensure_routes())
    for name, factory, block_type in (
        (DEFAULT_POOL, local_pool_from_machine, ResourcePool),
        (DEFAULT_SETTINGS, PlannerSettings, PlannerSettings),
    ):
        try:
            block_type.load(name)
            created[name] = False
        except ValueError:
            factory().save(name)
            created[name] = True
    return created


def load_pools() -> dict[str, ResourcePool]:
    """Every ResourcePool document, by name; creates the default pool on a new server."""
    with get_client(sync_client=True) as client:
        try:
            documents = client.read_block_documents_by_type(ResourcePool.get_block_type_slug())
        except (ObjectNotFound, PrefectHTTPStatusError) as exc:
            if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code != 404:
                raise
            documents = []  # block type not registered yet: a new server
    if not documents:
        ensure_defaults()
        return {DEFAULT_POOL: ResourcePool.load(DEFAULT_POOL)}
    return {doc.name: ResourcePool._from_block_document(doc) for doc in documents}


def load_settings() -> PlannerSettings:
    """The `default` PlannerSettings document; the defaults when there is none."""
    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(DEFAULT_SETTINGS, PlannerSettings.get_block_type_slug())
        except ObjectNotFound:
            return PlannerSettings()
    return PlannerSettings._from_block_document(document)


@dataclass(frozen=True)
class RunBlocks:
    """What a run plans with: every ResourcePool by name, and the default PlannerSettings."""

    pools: dict[str, ResourcePool]
    settings: PlannerSettings


def read_run_blocks(page: int | None = None) -> RunBlocks:
    """The ResourcePool documents and the `default` PlannerSettings in one request (paged by
    `page`, PAGE by default; an explicit page is read from the server, never kept); a new
    server gets its default pool created, as `load_pools` does, and missing
    settings are the defaults, as in `load_settings`. The answer is kept for this process's
    next runs while no block changes (event_watch.py: the server's block-document events):
    the raw pages are kept, and parsed anew at each call, so no caller shares an object."""
    pages = _kept_pages() if page is None else _block_pages(page)
    documents = [BlockDocument.model_validate(row) for body in pages for row in json.loads(body)]
    pool_type, settings_type = ResourcePool.get_block_type_slug(), PlannerSettings.get_block_type_slug()
    pools = {d.name: ResourcePool._from_block_document(d) for d in documents if _slug(d) == pool_type}
    found = [d for d in documents if _slug(d) == settings_type and d.name == DEFAULT_SETTINGS]
    settings = PlannerSettings._from_block_document(found[0]) if found else PlannerSettings()
    return RunBlocks(pools or load_pools(), settings)


PAGE = 200  # block documents per request


def _block_pages(page: int = PAGE) -> tuple[bytes, ...]:
    """The server's answers (raw JSON) to the pools' and settings' filter, page by page."""
    pool_type, settings_type = ResourcePool.get_block_type_slug(), PlannerSettings.get_block_type_slug()
    pages: list[bytes] = []
    read = 0
    with get_client(sync_client=True) as client:
        while True:
            response = client.request(
                "POST",
                "/block_documents/filter",
                json={
                    "block_types": {"slug": {"any_": [pool_type, settings_type]}},
                    "block_documents": {"is_anonymous": {"eq_": False}},
                    "include_secrets": True,
                    "sort": "NAME_ASC",
                    "offset": read,
                    "limit": page,
                },
            )
            pages.append(response.content)
            rows = len(json.loads(response.content))
            read += rows
            if rows < page:
                return tuple(pages)


_kept_pages = KeptRead(_block_pages, prefixes=BLOCK_EVENTS)


def _slug(document: BlockDocument) -> str | None:
    return document.block_type.slug if document.block_type is not None else None
