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

import asyncio
import json
import logging
import socket
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
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


ADDRESS_FORM = "tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786)"


def check_address(address: str) -> str:
    """`address` as Dask reads it (a scheme, a host and a port); DaskClusterError naming
    the value and the form otherwise."""
    from distributed.comm.addressing import parse_address, parse_host_port  # noqa: PLC0415 (heavy)
    from distributed.comm.registry import backends  # noqa: PLC0415 (heavy)

    try:
        scheme, location = parse_address(address)
        if scheme not in backends:
            raise ValueError(f"unknown scheme '{scheme}', Dask knows {', '.join(sorted(backends))}")
        if scheme in ("tcp", "tls", "ws", "wss"):
            parse_host_port(location)
    except ValueError as exc:
        raise DaskClusterError(
            f"'{address}' is not a Dask scheduler address ({exc}). Fix: give it as {ADDRESS_FORM}"
        ) from None
    return address


def started_by_planflow(address: str, paths: StatePaths | None = None) -> bool:
    """Whether `address` is the local cluster `planflow dask up` started (no dashboard)."""
    try:
        record = json.loads(cluster_file(paths or StatePaths.discover()).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("address") == address and not record.get("external")


def unreachable(address: str, timeout: float, exc: BaseException | str, fix: str = "") -> DaskClusterError:
    if isinstance(exc, str):
        why = exc
    elif isinstance(exc, TimeoutError) and not str(exc):
        why = f"no answer within {timeout:g} s"
    else:
        why = f"waited {timeout:g} s: {type(exc).__name__}: {exc}"
    fix = fix or (
        f"{START_HINT}, or point PLANFLOW_DASK_ADDRESS at a running scheduler "
        "(PLANFLOW_DASK_CONNECT_SECONDS bounds the wait)"
    )
    return DaskClusterError(f"the Dask scheduler at {address} does not answer ({why}). Fix: {fix}")


def _refused(address: str, timeout: float) -> str | None:
    """Why nothing can answer at a tcp `address`, known at once (no such host, or nothing
    listens: Dask's own connect retries those until its timeout), else None."""
    from distributed.comm.addressing import parse_address, parse_host_port  # noqa: PLC0415 (heavy)

    scheme, location = parse_address(address)
    if scheme != "tcp":
        return None
    host, port = parse_host_port(location)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:  # the resolver did not answer: Dask's connect tries again
            return None
        return f"host '{host}' is not known: {exc.strerror}"
    except ConnectionRefusedError:
        return f"nothing listens on port {port} of {host}"
    except OSError:
        return None  # a timeout or an unreachable network: Dask's connect gets the rest of the wait
    return None


class _Unreadable(Exception):
    """What answered did not reply as Dask does (the connection itself succeeded)."""


def _identity(address: str, timeout: float) -> dict[str, Any]:
    """The scheduler's `identity` (what `Client.scheduler_info` reads), asked on one
    connection with Dask's configured security (TLS), in a thread of its own: no Client,
    whose clean-up after a failed connect waited twice its timeout more and printed a
    traceback; and callable where an event loop already runs. _Unreadable when the
    connection succeeded but the reply is not Dask's."""
    from distributed.comm import connect  # noqa: PLC0415 (heavy)
    from distributed.security import Security  # noqa: PLC0415

    async def ask() -> dict[str, Any]:
        try:  # the handshake reads the peer's reply too
            comm = await connect(address, timeout=timeout, **Security().get_connection_args("client"))
        except (OSError, TimeoutError, TypeError, ValueError):  # unreachable, or Dask's own refusal (TLS)
            raise
        except Exception as exc:  # noqa: BLE001
            raise _Unreadable(f"{type(exc).__name__}: {exc}") from None
        try:
            await comm.write({"op": "identity", "n_workers": -1, "reply": True})
            return await comm.read()
        except (OSError, TimeoutError):
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a frame length of exabytes from a stranger
            raise _Unreadable(f"{type(exc).__name__}: {exc}") from None
        finally:
            await comm.close()

    with ThreadPoolExecutor(1, thread_name_prefix="planflow-dask-identity") as pool:
        return pool.submit(asyncio.run, asyncio.wait_for(ask(), timeout)).result()


def cluster_resources(address: str, timeout: float | None = None, fix: str = "") -> dict[str, dict[str, float]]:
    """Each worker's address -> the resources it offers; DaskClusterError when `address`
    is malformed, is not a scheduler, or does not answer within `timeout` seconds (at once
    when nothing listens there). `fix` replaces the default advice."""
    return {worker: dict(w.get("resources") or {}) for worker, w in cluster_workers(address, timeout, fix).items()}


def cluster_workers(address: str, timeout: float | None = None, fix: str = "") -> dict[str, dict[str, Any]]:
    """Each worker's address -> what the scheduler knows of it (`name`, `resources`, ...);
    errors as cluster_resources'."""
    timeout = timeout or settings().dask_connect_seconds
    check_address(address)
    started = time.monotonic()
    refused = _refused(address, min(timeout, 2.0))
    if refused:
        raise unreachable(address, timeout, refused, fix)
    left = max(0.5, timeout - (time.monotonic() - started))  # the whole wait stays within `timeout`
    try:
        info: Any = _identity(address, left)
    except (OSError, TimeoutError) as exc:
        raise unreachable(address, timeout, exc, fix) from None
    except _Unreadable as exc:
        info = {"unreadable": str(exc)}
    except (TypeError, ValueError) as exc:  # connect's own refusal: e.g. tls:// without TLS configured
        raise DaskClusterError(
            f"cannot connect to the Dask scheduler at {address}: {type(exc).__name__}: {exc}. Fix: for tls://, "
            "set Dask's TLS configuration (distributed.comm.tls.* in Dask's config, or DASK_DISTRIBUTED__COMM__TLS__* "
            "variables) where planflow runs"
        ) from None
    if not isinstance(info, dict) or not isinstance(info.get("workers"), dict) or "unreadable" in info:
        said = info if isinstance(info, dict) else {}
        what = said.get("unreadable") or f"it said: {said.get('type') or said.get('status') or type(info).__name__}"
        raise DaskClusterError(
            f"{address} answers, but not as a Dask scheduler ({what}). Fix: give "
            "the scheduler's address (a worker's log names it: 'Registered to: tcp://...')"
        )
    return {worker: dict(w) for worker, w in info["workers"].items()}


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
