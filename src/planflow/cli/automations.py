"""`planflow automations apply | ls | rm | worker`: planflow's Prefect automations and
the remediation worker. What they are and how they are applied: planflow.remediation.automations.
"""

from __future__ import annotations

import typer

from planflow.cli.common import ensure_server, fail
from planflow.remediation.automations import (
    REMEDIATION_POOL,
    AutomationsError,
    apply,
    planflow_automations,
    remove,
    worker_down,
    worker_up,
)

automations_app = typer.Typer(help="planflow's Prefect automations (retry, failover, rescale).", no_args_is_help=True)


@automations_app.command("apply")
def apply_command() -> None:
    """Create or update every planflow automation, its routes and deployments (idempotent)."""
    ensure_server()
    try:
        for line in apply():
            typer.echo(line)
    except AutomationsError as exc:
        fail(str(exc))


@automations_app.command("ls")
def ls_command() -> None:
    """List planflow's automations: name, enabled, trigger events, action."""
    ensure_server()
    found = planflow_automations()
    if not found:
        typer.echo("no planflow automations. Create them with: planflow automations apply")
    for a in found:
        events = ",".join(sorted(getattr(a.trigger, "expect", []) or []))
        actions = ",".join(x.type for x in a.actions)
        typer.echo(f"{a.name:<45} {'enabled' if a.enabled else 'disabled':<9} {events}  -> {actions}")


@automations_app.command("rm")
def rm_command(
    name: str | None = typer.Argument(None, help="Automation name; all of planflow's when omitted."),
) -> None:
    """Delete one planflow automation, or all of them."""
    ensure_server()
    removed = remove(name)
    if name and not removed:
        fail(f"no planflow automation named {name!r}; see `planflow automations ls`")
    for item in removed:
        typer.echo(f"{item}: deleted")


automations_app.command("delete")(rm_command)


@automations_app.command("worker")
def worker_command(action: str = typer.Argument(..., help="up or down")) -> None:
    """Start (up) or stop (down) the remediation worker (`planflow stack up` does both)."""
    if action == "up":
        typer.echo(f"remediation worker: pid {worker_up()} (pool {REMEDIATION_POOL})")
    elif action == "down":
        typer.echo("remediation worker: " + ("stopped" if worker_down() else "not running"))
    else:
        fail(f"unknown action {action!r}: up or down")
