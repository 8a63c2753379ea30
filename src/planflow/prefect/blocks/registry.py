"""Register planflow's block types and read the pools the planner plans over."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

from planflow.prefect.blocks.alert_route import AlertRoute, ensure_routes
from planflow.prefect.blocks.planner_settings import PlannerSettings
from planflow.prefect.blocks.resource_pool import ResourcePool, local_pool_from_machine

DEFAULT_POOL = "local"
DEFAULT_SETTINGS = "default"


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
    try:
        return PlannerSettings.load(DEFAULT_SETTINGS)
    except ValueError:
        return PlannerSettings()
