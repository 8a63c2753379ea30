"""`planflow dask up | down | status`: the Dask cluster that `planflow run --mode dask` uses.

Mounted by planflow.cli.app as `planflow dask`.
"""

from __future__ import annotations

import typer

from planflow.cli.common import ensure_server, fail, say
from planflow.ops import dask as cluster
from planflow.prefect.blocks.registry import load_pools
from planflow.prefect.blocks.resource_pool import machine_capacity
from planflow.runtime.dask_cluster import DaskClusterError
from planflow.settings import StatePaths

dask_app = typer.Typer(
    help="A Dask cluster for Dask-mode runs: a local scheduler and workers sized from the "
    "ResourcePool blocks, or a scheduler of your own (--address).",
    no_args_is_help=True,
)


def _show(state: cluster.ClusterStatus) -> None:
    say(f"scheduler  {state.address or '-'}  {state.state}  {state.detail}".rstrip())
    for worker, resources in sorted(state.workers.items()):
        offers = " ".join(f"{name}={value:g}" for name, value in sorted(resources.items()))
        say(f"worker     {worker}  {offers or '(no resources)'}")
    for name, why in sorted(state.missing.items()):
        fix = "planflow dask up starts it again" if why.startswith(cluster.GONE) else "wait, or read its log"
        say(f"worker     {name}  MISSING: {why}. Fix: {fix}")


@dask_app.command("up")
def up(
    workers: int | None = typer.Option(
        None, min=1, help="Worker processes per pool, each offering an even share of it [default: 1]."
    ),
    pool: list[str] = typer.Option([], "--pool", help="Only these pools (default: every ResourcePool block)."),
    port: int = typer.Option(0, min=0, max=65535, help="The scheduler's port (default: a free one)."),
    address: str | None = typer.Option(
        None, help="Start nothing: use the running scheduler at this address (e.g. tcp://10.0.0.5:8786)."
    ),
) -> None:
    """Start a local scheduler and workers (idempotent: on a running cluster, the workers
    whose processes ended are started again), or record --address; print the workers."""
    paths = StatePaths.discover()
    capacities = None
    if address and (workers or pool or port):
        given = [o for o, v in (("--workers", workers), ("--pool", pool), ("--port", port)) if v]
        fail(f"{', '.join(given)} size a local cluster; --address starts none. Fix: leave out {given[0]}", 2)
    if not address:
        ensure_server()
        pools = load_pools()
        unknown = sorted(set(pool) - set(pools))
        if unknown:
            fail(f"--pool {', '.join(unknown)}: no such ResourcePool block (pools: {', '.join(sorted(pools))})", 2)
        machine = machine_capacity()
        capacities, cut = cluster.local_capacities(
            {name: p.capacity() for name, p in pools.items() if not pool or name in pool}, machine
        )
    try:
        state = cluster.up(paths, capacities, workers=workers, port=port, address=address)
    except (DaskClusterError, ValueError) as exc:
        fail(str(exc))
    if not address and cut:
        say(
            f"cut        this machine has cpu={machine['cpu']:g}, gpu={machine['gpu']:g}, "
            f"mem_gib={machine['mem_gib']:g}: the local workers of {', '.join(cut)} offer at most that, "
            "so a step that needs more is refused when planned. Fix: a cluster that has them, "
            "planflow dask up --address tcp://HOST:8786"
        )
    _show(state)
    say(f"state in {cluster.dask_dir(paths)}; runs: planflow run NAME --mode dask")


@dask_app.command("down")
def down() -> None:
    """Stop the local scheduler and workers (a recorded --address is only forgotten)."""
    stopped = cluster.down(StatePaths.discover())
    say(f"stopped {', '.join(stopped)}" if stopped else "no local Dask process was running")


@dask_app.command("status")
def status(
    address: str | None = typer.Option(None, help="Ask this scheduler instead of the configured one."),
) -> None:
    """Show the scheduler that Dask-mode runs use and what each worker offers; exit code 3 unless it answers."""
    state = cluster.status(StatePaths.discover(), address)
    _show(state)
    if state.state not in ("running", "external"):
        raise typer.Exit(3)
