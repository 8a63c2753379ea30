"""A pool of a test module's own: its ResourcePool block and shared-slot limits."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from planflow.prefect.blocks import ResourcePool
from planflow.prefect.limits import sync_limits


@contextmanager
def own_pool(name: str, capacity: Mapping[str, float]) -> Iterator[str]:
    """The `local-process` ResourcePool `name` with `capacity` and its limits, removed after
    (other tests plan over every pool)."""
    ResourcePool(work_pool="local-process", cpu=capacity["cpu"], mem_gib=capacity["mem_gib"]).save(name, overwrite=True)
    sync_limits({name: capacity})
    yield name
    ResourcePool.delete(name)
