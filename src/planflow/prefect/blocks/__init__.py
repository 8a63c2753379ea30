"""Prefect Blocks: the configuration users edit in the Prefect UI."""

from planflow.prefect.blocks.alert_route import AlertRoute, ensure_routes, load_route, load_routes
from planflow.prefect.blocks.planner_settings import PlannerSettings
from planflow.prefect.blocks.registry import (
    DEFAULT_POOL,
    DEFAULT_SETTINGS,
    ensure_defaults,
    load_pools,
    load_settings,
    register,
)
from planflow.prefect.blocks.resource_pool import ResourcePool, local_pool_from_machine

__all__ = [
    "AlertRoute",
    "DEFAULT_POOL",
    "DEFAULT_SETTINGS",
    "PlannerSettings",
    "ResourcePool",
    "ensure_defaults",
    "ensure_routes",
    "load_route",
    "load_routes",
    "load_pools",
    "load_settings",
    "local_pool_from_machine",
    "register",
]
