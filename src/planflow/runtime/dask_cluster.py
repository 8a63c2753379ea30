"""The Dask cluster as Dask mode sees it: where its scheduler is, which pools its workers
offer, and whether a run's steps fit them (the light half of Dask mode: planning and
`planflow dask` use it without importing distributed until they talk to the scheduler).

Every worker offers each resource of its pool as a Dask worker resource named
`<pool>.<resource>`; a step planned on a pool asks for its demand under the same names:

    worker started with   --resources "local.cpu=2 local.gpu=0 local.mem_gib=8"
    step planned on local with cpu=1, mem_gib=2  ->  resources={"local.cpu": 1, "local.mem_gib": 2}

The scheduler: PLANFLOW_DASK_ADDRESS, else the one `planflow dask up` recorded in the
state folder. One that does not answer within PLANFLOW_DASK_CONNECT_SECONDS is an error
naming the command that starts one; a step whose demand no worker offers is refused
when the run is planned (`require_offered`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from planflow.runtime.dispatch import RESOURCES, Assignment
from planflow.settings import StatePaths, settings

START_HINT = "planflow dask up (a local cluster sized from the ResourcePool blocks)"


class DaskClusterError(RuntimeError):
    """No Dask scheduler is configured, or the configured one does not answer."""


class DaskResourceError(ValueError):
    """A step asks for Dask worker resources that no worker of the cluster offers."""


def resource_name(pool: str, resource: str) -> str:
    """The Dask worker resource standing for `resource` of planflow pool `pool`."""
    return f"{pool}.{resource}"


def pool_resources(pool: str, amounts: Mapping[str, float]) -> dict[str, float]:
    """What a worker of `pool` offers: every resource, also those it has none of."""
    return {resource_name(pool, r): float(amounts.get(r, 0.0)) for r in RESOURCES}


def task_resources(pool: str, demand: Mapping[str, float]) -> dict[str, float]:
    """What a step planned on `pool` asks of a worker: its cpu always (so that only the
    pool's workers take it, even at cpu=0), the other resources it needs any of."""
    return {
        resource_name(pool, r): float(demand.get(r, 0.0)) for r in RESOURCES if r == "cpu" or demand.get(r, 0.0) > 0
    }


def cluster_file(paths: StatePaths) -> Path:
    """JSON written by `planflow dask up`: the scheduler's address and the workers started."""
    return paths.home / "dask" / "cluster.json"


def scheduler_address(paths: StatePaths | None = None) -> str:
    """PLANFLOW_DASK_ADDRESS, else the address `planflow dask up` recorded."""
    chosen = settings().dask_address
    if chosen:
        return chosen
    try:
        address = json.loads(cluster_file(paths or StatePaths.discover()).read_text()).get("address")
    except (OSError, ValueError, AttributeError):
        address = None
    if not address:
        raise DaskClusterError(
            f"Dask mode has no scheduler: none is recorded and PLANFLOW_DASK_ADDRESS is not set. Fix: {START_HINT}, "
            "or export PLANFLOW_DASK_ADDRESS=tcp://HOST:8786 (a scheduler of your own)"
        )
    return address


def unreachable(address: str, timeout: float, exc: BaseException) -> DaskClusterError:
    return DaskClusterError(
        f"the Dask scheduler at {address} does not answer (waited {timeout:g} s: {type(exc).__name__}: {exc}). "
        f"Fix: {START_HINT}, or point PLANFLOW_DASK_ADDRESS at a running scheduler "
        "(PLANFLOW_DASK_CONNECT_SECONDS bounds the wait)"
    )


def cluster_resources(address: str, timeout: float | None = None) -> dict[str, dict[str, float]]:
    """Each worker's address -> the resources it offers; DaskClusterError when the
    scheduler does not answer within `timeout` seconds."""
    import distributed  # noqa: PLC0415 (heavy: imported only when a scheduler is asked)

    timeout = timeout or settings().dask_connect_seconds
    try:
        with distributed.Client(address, timeout=timeout, set_as_default=False) as client:
            info = client.scheduler_info(n_workers=-1)
    except (OSError, TimeoutError) as exc:
        raise unreachable(address, timeout, exc) from None
    return {worker: dict(w.get("resources") or {}) for worker, w in info.get("workers", {}).items()}


_SEEN_SECONDS = 5.0  # a run's plan asks the scheduler once: run_pools, then require_offered
_seen: dict[str, tuple[float, dict[str, dict[str, float]]]] = {}


def worker_offers(address: str | None = None) -> dict[str, dict[str, float]]:
    """`cluster_resources` of the scheduler runs use, as seen within the last few seconds."""
    address = address or scheduler_address()
    seen = _seen.get(address)
    if seen is None or time.monotonic() - seen[0] > _SEEN_SECONDS:
        seen = _seen[address] = (time.monotonic(), cluster_resources(address))
    return seen[1]


def dask_pools(pools: Mapping[str, Any], log: logging.Logger | logging.LoggerAdapter) -> dict[str, Any]:
    """The ResourcePools (by name) whose resources some Dask worker offers; the others are
    left out of the plan with a warning, and DaskResourceError when none is left."""
    address = scheduler_address()
    workers = worker_offers(address)
    offered = offered_pools(workers)
    for name in sorted(set(pools) - offered):
        log.warning("pool '%s' is left out of the plan: no Dask worker at %s offers its resources", name, address)
    usable = {name: pool for name, pool in pools.items() if name in offered}
    if not usable:
        names = sorted({r for w in workers.values() for r in w})
        raise DaskResourceError(
            f"no Dask worker at {address} offers the resources of a pool ({', '.join(sorted(pools))}): "
            f"{len(workers)} worker(s) offer {', '.join(names) or 'no resources'}. Fix: {START_HINT}, or start "
            f'workers with --resources "POOL.cpu=N POOL.gpu=N POOL.mem_gib=N" for a pool of yours'
        )
    return usable


def offered_pools(workers: Mapping[str, Mapping[str, float]]) -> set[str]:
    """The planflow pools some worker offers (its `<pool>.cpu` resource)."""
    return {name.removesuffix(".cpu") for w in workers.values() for name in w if name.endswith(".cpu")}


def require_offered(assignments: Mapping[str, Assignment], workers: Mapping[str, Mapping[str, float]]) -> None:
    """DaskResourceError listing every step that no single worker can take, with what
    it asks, the best any worker offers and the fix."""
    problems = []
    for step, a in sorted(assignments.items()):
        wanted = task_resources(a.pool, a.demand)
        if any(all(w.get(r, -1.0) >= v - 1e-9 for r, v in wanted.items()) for w in workers.values()):
            continue
        short = {r: v for r, v in wanted.items() if all(w.get(r, -1.0) < v - 1e-9 for w in workers.values())}
        best = {r: max((w[r] for w in workers.values() if r in w), default=None) for r in short or wanted}
        offers = ", ".join(f"{r}={'none' if b is None else f'{b:g}'}" for r, b in best.items())
        asks = ", ".join(f"{r}={v:g}" for r, v in (short or wanted).items())
        problems.append(
            f"step '{step}' (pool '{a.pool}') asks for {asks}; no Dask worker offers that (most offered: {offers}). "
            f'Fix: start a worker with --resources "{" ".join(f"{r}={v:g}" for r, v in wanted.items())}" '
            f"(planflow dask up --workers N sizes them from the ResourcePool blocks), or lower the component's demand"
        )
    if problems:
        raise DaskResourceError(
            f"Dask mode cannot run {len(problems)} step(s) on this cluster:\n" + "\n".join(f"  - {p}" for p in problems)
        )
