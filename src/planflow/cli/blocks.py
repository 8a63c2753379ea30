"""`planflow blocks register | apply` and `planflow pools ls | set | sync` (the ResourcePool
blocks, and the global concurrency limits that hold each pool's capacity across runs)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from pydantic import ValidationError
from rich.table import Table

from planflow.cli.common import console, ensure_server, fail, say, warn
from planflow.prefect.blocks import DEFAULT_POOL, ResourcePool, ensure_defaults, load_pools, register
from planflow.prefect.blocks.documents import BlockDocumentError, apply_folder, default_folder, plan_folder
from planflow.prefect.health import ServerNotAnswering
from planflow.prefect.limits import LimitsInUseError, limit_drift, remove_pool_limits, sync_limits
from planflow.prefect.workpools import POOLS

blocks_app = typer.Typer(help="planflow's Prefect blocks.", no_args_is_help=True)
pools_app = typer.Typer(help="Resource pools (ResourcePool blocks).", no_args_is_help=True)


@blocks_app.command("register")
def blocks_register() -> None:
    """Register planflow's block types; create the `local` pool and default settings."""
    ensure_server()
    for name, new in ensure_defaults().items():
        say(f"{name}: {'created' if new else 'kept (already exists)'}")


@blocks_app.command("apply")
def blocks_apply(
    folder: Path | None = typer.Argument(None, help="The block documents' folder (default: the project's blocks/)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would change; change nothing."),
) -> None:
    """Create or update the blocks the project's block documents (blocks/*.yaml) state
    (idempotent); every problem in them is listed before anything changes."""
    ensure_server()
    register()  # block types only (as `blocks register`): a fresh server has none to compare with
    where = folder or default_folder()
    try:
        lines = plan_folder(where) if dry_run else apply_folder(where)
    except (BlockDocumentError, ServerNotAnswering) as exc:
        fail(str(exc))
    for line in lines:
        say(line)
    if not dry_run:
        _sync()


def _sync() -> None:
    """Bring every pool's concurrency limits in step with its block (and say what changed)."""
    for line in sync_limits({name: pool.capacity() for name, pool in load_pools().items()}):
        say(line)


@pools_app.command("sync")
def pools_sync(
    check: bool = typer.Option(False, "--check", help="Only name limits that differ from their blocks (exit 1)."),
) -> None:
    """Create or resize each pool's global concurrency limits (cpu millicores, GPUs, memory
    MiB) from its ResourcePool block, undoing changes made by hand in the UI."""
    ensure_server()
    capacities = {name: pool.capacity() for name, pool in load_pools().items()}
    if check:
        missing, drift = limit_drift(capacities)
        for problem in drift + [f"concurrency limit '{name}' is missing. Fix: planflow pools sync" for name in missing]:
            say(problem)
        if drift or missing:
            raise typer.Exit(1)
        say("every pool's concurrency limits match its block")
        return
    _sync()


@pools_app.command("ls")
def pools_ls() -> None:
    """List the resource pools the planner plans over."""
    ensure_server()
    table = Table("pool", "work pool", "cpu", "gpu", "mem GiB", "cost/h", "backup")
    for name, pool in sorted(load_pools().items()):
        table.add_row(
            name,
            pool.work_pool,
            f"{pool.cpu:g}",
            str(pool.gpu),
            f"{pool.mem_gib:g}",
            f"{pool.cost_per_hour:g}",
            pool.backup_pool or "-",
        )
    console.print(table)


@pools_app.command("rm")
def pools_rm(name: str = typer.Argument(..., help="planflow pool name, e.g. gpu")) -> None:
    """Remove a ResourcePool block and its concurrency limits (not `local`; not a pool in use
    or named as another pool's backup). A project's blocks/ folder may create it again at
    the next `planflow blocks apply`."""
    if name == DEFAULT_POOL:
        fail(
            f"pool '{DEFAULT_POOL}' is the pool in-process runs use. Fix: resize it (`planflow pools set {name} ...`)",
            2,
        )
    ensure_server()
    pools = load_pools()
    if name not in pools:
        fail(f"no pool named '{name}'. Known pools: {', '.join(sorted(pools))}. See `planflow pools ls`.", 2)
    backed = sorted(other for other, pool in pools.items() if pool.backup_pool == name)
    if backed:
        fail(f"pool '{name}' is the backup_pool of {', '.join(backed)}. Fix: give them another backup first", 2)
    try:
        lines = remove_pool_limits(name)
    except LimitsInUseError as exc:
        fail(str(exc))
    ResourcePool.delete(name)
    say(f"pool {name}: removed")
    for line in lines:
        say(line)


@pools_app.command("set")
def pools_set(
    name: str = typer.Argument(..., help="planflow pool name, e.g. gpu"),
    work_pool: str | None = typer.Option(None, help="Prefect work pool (a new pool: NAME; else kept)."),
    cpu: float | None = typer.Option(None, help="CPU cores (needed for a new pool; else kept)."),
    mem_gib: float | None = typer.Option(None, help="Memory, GiB (needed for a new pool; else kept)."),
    gpu: int | None = typer.Option(None, help="GPUs (a new pool: 0; else kept)."),
    cost_per_hour: float | None = typer.Option(None, help="Cost of one hour (a new pool: 0; else kept)."),
    backup_pool: str | None = typer.Option(
        None, help="Pool to fail over to, an existing one ('' removes it; else kept)."
    ),
) -> None:
    """Create a ResourcePool block, or change the options given of an existing one (the
    others keep their values)."""
    given = {
        "work_pool": work_pool,
        "cpu": cpu,
        "mem_gib": mem_gib,
        "gpu": gpu,
        "cost_per_hour": cost_per_hour,
        "backup_pool": backup_pool,
    }
    given = {key: value for key, value in given.items() if value is not None}
    try:  # the options' own checks before a server is started or asked
        ResourcePool.model_validate({"work_pool": name, "cpu": 1, "mem_gib": 1, **given, "backup_pool": None})
    except ValidationError as exc:
        fail(f"pool '{name}': " + "; ".join(_option_problem(error) for error in exc.errors()), 2)
    ensure_server()
    register()
    pools = load_pools()
    current = pools.get(name)
    if current is None and ("cpu" not in given or "mem_gib" not in given):
        fail(
            f"pool '{name}' does not exist yet: a new pool needs its size. "
            f"Fix: planflow pools set {name} --cpu 2 --mem-gib 4",
            2,
        )
    values = current.model_dump(include=set(ResourcePool.model_fields)) if current is not None else {"work_pool": name}
    values.update(given)
    if values.get("backup_pool") == "":
        values["backup_pool"] = None
    backup = values.get("backup_pool") if "backup_pool" in given else None  # a stored one is not re-judged
    if backup is not None and (backup == name or backup not in pools):
        known = ", ".join(sorted(p for p in pools if p != name)) or "(none)"
        why = "is the pool itself" if backup == name else "is not a pool"
        fail(
            f"pool '{name}': --backup-pool {backup!r} {why}: a failover would have nowhere to go. Known pools: "
            f"{known}. Fix: planflow pools set {backup} --cpu N --mem-gib N first, or name one of those",
            2,
        )
    pool = ResourcePool(**values)
    pool.save(name, overwrite=True)
    backup_text = f", backup {pool.backup_pool}" if pool.backup_pool else ""
    sizes = f"cpu={pool.cpu:g} gpu={pool.gpu} mem_gib={pool.mem_gib:g}"
    say(f"pool {name}: {sizes}{backup_text} -> work pool {pool.work_pool}")
    for line in sync_limits({name: pool.capacity()}):
        say(line)
    if "work_pool" in given or current is None:
        _say_if_no_work_pool(pool.work_pool, name)


def _say_if_no_work_pool(work_pool: str, name: str) -> None:
    """A warning when the Prefect work pool a ResourcePool names does not exist: in-process
    runs (`planflow run --pool NAME`) need none, but deployments and distributed runs on
    the pool wait for it, and nothing said so."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(work_pool)
            return
        except ObjectNotFound:
            pass
    how = (
        f"planflow workpools apply {work_pool}"
        if work_pool in POOLS
        else f"prefect work-pool create {work_pool} --type process"
    )
    warn(
        f"note: the Prefect work pool '{work_pool}' does not exist: in-process runs (planflow run NAME --pool {name}) "
        f"need none, but distributed runs and deployments on pool '{name}' need it. Fix: {how}, or "
        f"planflow pools set {name} --work-pool <an existing one>"
    )


_OPTION_EXAMPLES = {
    "cpu": "--cpu 2",
    "mem_gib": "--mem-gib 4",
    "gpu": "--gpu 1",
    "cost_per_hour": "--cost-per-hour 0.5",
}


def _option_problem(error: Mapping[str, Any]) -> str:
    """One of ResourcePool's validation errors as the option that was given: `--cpu -2:
    Input should be greater than 0. Fix: e.g. --cpu 2`."""
    field = str(error["loc"][0]) if error.get("loc") else "value"
    example = _OPTION_EXAMPLES.get(field)
    fix = f". Fix: e.g. {example}" if example else ""
    return f"--{field.replace('_', '-')} {error.get('input')!r}: {error['msg']}{fix}"
