"""`planflow workpools apply | ls | status`: planflow's Prefect work pools and their workers.

The work pools themselves (definitions, templates, checks) are planflow.prefect.workpools.
"""

from __future__ import annotations

import typer
from prefect.client.orchestration import get_client

from planflow.cli.common import ensure_server, fail
from planflow.prefect.workpools import PAUSED, POOLS, WorkPoolError, apply_work_pools, worker_status

workpools_app = typer.Typer(
    help="Prefect work pools (process, docker, kubernetes) and their workers.", no_args_is_help=True
)


@workpools_app.command("apply")
def apply_command(
    names: list[str] | None = typer.Argument(None, help=f"Pools to apply (default: {', '.join(POOLS)})."),
    no_resource_pools: bool = typer.Option(False, "--no-resource-pools", help="Do not create the ResourcePool blocks."),
) -> None:
    """Create or update planflow's work pools from the job templates it ships (idempotent)."""
    ensure_server()
    try:
        for line in apply_work_pools(names or None, resource_pools=not no_resource_pools):
            typer.echo(line)
    except WorkPoolError as exc:
        fail(str(exc))


@workpools_app.command("ls")
def ls_command() -> None:
    """List the work pools with their type, status and workers."""
    ensure_server()
    with get_client(sync_client=True) as client:
        pools = client.read_work_pools()
    if not pools:
        typer.echo("no work pools. Create planflow's with: planflow workpools apply")
    width = max((len(pool.name) for pool in pools), default=0)  # a longer name shifted its row's columns
    for pool in sorted(pools, key=lambda p: p.name):
        status = getattr(pool.status, "value", pool.status) or "-"
        typer.echo(f"{pool.name:<{width}}  {pool.type:<12} {str(status):<10} {worker_status(pool.name)}")


@workpools_app.command("status")
def status_command(pool: str = typer.Argument(..., help="Work pool name.")) -> None:
    """Say whether a worker serves POOL, and whether it is paused; exit 3 when no worker
    serves it or it is paused (its flow runs wait either way)."""
    ensure_server()
    try:
        message = worker_status(pool)
    except WorkPoolError as exc:
        fail(str(exc))
    typer.echo(message)
    if "no worker running" in message or PAUSED in message:
        raise typer.Exit(3)
