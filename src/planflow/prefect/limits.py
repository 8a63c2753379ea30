"""Each pool's capacity as Prefect global concurrency limits, used as weighted slots.

One limit per pool and resource, in whole slots (Prefect counts integers):

    planflow-<pool>-cpu-millicores   1 slot = 1/1000 of a core
    planflow-<pool>-gpu              1 slot = 1 GPU
    planflow-<pool>-mem-mib          1 slot = 1 MiB

and per pool `planflow-<pool>-turn` (1 slot: the step claiming slots as they come free,
runtime/slot_claims.py), plus `planflow-planning` (1 slot: planning, one run at a time).

A component holding cpu=1.5, mem_gib=2 on pool `local` occupies 1500 slots of
`planflow-local-cpu-millicores` and 2048 of `planflow-local-mem-mib` while it runs, so
the limits hold across every run, process and machine that talks to the server.

The limits follow the ResourcePool blocks: `sync_limits` creates or resizes them
(`planflow pools set`, `planflow blocks apply`, a run on a new server); `limit_drift`
names every limit whose size differs from its block, e.g. one changed by hand in the UI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

RESOURCES = ("cpu", "gpu", "mem_gib")
SLOTS_PER_UNIT = {"cpu": 1000, "gpu": 1, "mem_gib": 1024}
_SUFFIX = {"cpu": "cpu-millicores", "gpu": "gpu", "mem_gib": "mem-mib"}
# Serialises "read the calendar, plan, write the plan" across every process.
PLANNING_LIMIT = "planflow-planning"


class LimitDriftError(RuntimeError):
    """A pool's concurrency limit differs from its ResourcePool block."""


class LimitsInUseError(RuntimeError):
    """A pool's limits have slots held: runs use the pool now."""


def limit_name(pool: str, resource: str) -> str:
    return f"planflow-{pool}-{_SUFFIX[resource]}"


def turn_limit(pool: str) -> str:
    """The pool's turn: one slot, held by the one step that claims slots as they come free
    (runtime/slot_claims.py)."""
    return f"planflow-{pool}-turn"


def parse_limit_name(name: str) -> tuple[str, str] | None:
    """(pool, resource) of a pool's limit name, None for any other limit.

    >>> parse_limit_name("planflow-bench-small-cpu-millicores")
    ('bench-small', 'cpu')
    """
    for resource, suffix in _SUFFIX.items():
        if name.startswith("planflow-") and name.endswith(f"-{suffix}") and len(name) > len(suffix) + 10:
            return name[len("planflow-") : -len(suffix) - 1], resource
    return None


def slots(resource: str, amount: float) -> int:
    """Whole slots for `amount` of `resource` (rounded up: a step never holds less than it uses)."""
    return max(0, math.ceil(amount * SLOTS_PER_UNIT[resource] - 1e-6))


def pool_limits(pool: str, capacity: Mapping[str, float]) -> dict[str, int]:
    """Limit name -> size in slots for one pool (capacity rounded down: never more than it has)."""
    return {limit_name(pool, r): math.floor(capacity.get(r, 0.0) * SLOTS_PER_UNIT[r] + 1e-6) for r in RESOURCES}


def sync_limits(capacities: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Create or resize every pool's limits to its block's capacity; one line per change.
    Several runs may do this at once on a new server: a limit created in between is checked."""
    sizes = {name: size for pool, cap in sorted(capacities.items()) for name, size in pool_limits(pool, cap).items()}
    lines = []
    with get_client(sync_client=True) as client:
        turns = [(turn_limit(pool), 1) for pool in sorted(capacities)]
        for name, size in [*sizes.items(), *turns, (PLANNING_LIMIT, 1)]:
            try:
                found = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=size))
                    lines.append(f"limit {name}: created with {size} slots")
                    continue
                except ObjectAlreadyExists:  # another process created it in between
                    found = client.read_global_concurrency_limit_by_name(name)
            if found.limit != size or not found.active:
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=size, active=True))
                lines.append(f"limit {name}: {found.limit} -> {size} slots")
    return lines


def remove_pool_limits(pool: str) -> list[str]:
    """Delete `pool`'s limits (its resources' and its turn); one line per limit deleted.
    Refused (LimitsInUseError, nothing deleted) while any of them has slots held: the runs
    holding them would give back slots of a limit that is gone."""
    names = [*(limit_name(pool, r) for r in RESOURCES), turn_limit(pool)]
    held = {name: n for name, n in active_slots(names).items() if n}
    if held:
        raise LimitsInUseError(
            f"pool '{pool}' is in use: "
            + ", ".join(f"{name} has {n} slots held" for name, n in held.items())
            + ". Fix: remove it once its runs have ended (`planflow calendar "
            + pool
            + "` shows them)"
        )
    lines = []
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.delete_global_concurrency_limit_by_name(name)
                lines.append(f"limit {name}: deleted")
            except ObjectNotFound:
                pass
    return lines


def read_limits() -> dict[str, Any]:
    """Every global concurrency limit on the server, by name (one request for up to 200)."""
    with get_client(sync_client=True) as client:
        return _all_limits(client)


def limit_drift(
    capacities: Mapping[str, Mapping[str, float]], limits: Mapping[str, Any] | None = None
) -> tuple[list[str], list[str]]:
    """(missing limit names, one message per limit whose size or state differs from its
    block). A limit changed by hand is named with both sizes and both ways to fix it.
    `limits`: the server's limits as read_limits returned them (read now when None)."""
    missing, drift = [], []
    limits = read_limits() if limits is None else limits  # one request for all, not one per limit
    for pool, capacity in sorted(capacities.items()):
        for resource in RESOURCES:
            name, size = limit_name(pool, resource), pool_limits(pool, capacity)[limit_name(pool, resource)]
            found = limits.get(name)
            if found is None:
                missing.append(name)
                continue
            if found.limit != size or not found.active:
                state = f"{found.limit} slots" + ("" if found.active else ", inactive")
                drift.append(
                    f"concurrency limit '{name}' is {state} but ResourcePool '{pool}' says "
                    f"{resource}={capacity.get(resource, 0.0):g} ({size} slots): it was changed outside "
                    f"planflow (e.g. in the UI). Fix: `planflow pools sync` to restore it from the block, "
                    f"or change the pool itself (`planflow pools set {pool} ...`)"
                )
    missing += [turn_limit(pool) for pool in sorted(capacities) if turn_limit(pool) not in limits]
    if PLANNING_LIMIT not in limits:
        missing.append(PLANNING_LIMIT)
    return missing, drift


def pool_limits_now(client: Any, name: str) -> dict[str, Any]:
    """Limit `name` as the server holds it now, and with it the other limits of its pool
    (its cpu, gpu, memory and turn), by name; a name that does not exist is absent. A
    waiting run reads its pool's memory, cores and turn within one dispatcher round: one
    request for all of them (the limits' filter, about 5 ms of the server's CPU) instead of
    one per limit (about 4 ms each). Any other limit is read by its name alone."""
    parsed = parse_limit_name(name)
    pool = parsed[0] if parsed else (name[len("planflow-") : -len("-turn")] if name.endswith("-turn") else None)
    if not pool or not name.startswith("planflow-"):
        try:
            return {name: client.read_global_concurrency_limit_by_name(name)}
        except ObjectNotFound:
            return {}
    mine = {limit_name(pool, resource) for resource in _SUFFIX} | {turn_limit(pool)}
    return {found: limit for found, limit in _all_limits(client).items() if found in mine}


def _all_limits(client: Any, page: int = 200) -> dict[str, Any]:
    """Every global concurrency limit on the server, by name (a page of `page` per request)."""
    found: dict[str, Any] = {}
    while True:
        batch = client.read_global_concurrency_limits(limit=page, offset=len(found))
        found.update((limit.name, limit) for limit in batch)
        if len(batch) < page:
            return found


def require_limits(capacities: Mapping[str, Mapping[str, float]], limits: Mapping[str, Any] | None = None) -> list[str]:
    """Create the limits a new server lacks; LimitDriftError naming every limit that
    differs from its block. Returns the lines of what was created. `limits`: as read_limits
    returned them (read now when None)."""
    missing, drift = limit_drift(capacities, limits)
    if drift:
        raise LimitDriftError(
            "the pools' concurrency limits differ from their blocks:\n" + "\n".join(f"  - {d}" for d in drift)
        )
    return sync_limits(capacities) if missing else []


def active_slots(names: list[str]) -> dict[str, int]:
    """How many slots of each limit are held now (0 for a limit that does not exist)."""
    out = {}
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                out[name] = client.read_global_concurrency_limit_by_name(name).active_slots
            except ObjectNotFound:
                out[name] = 0
    return out
