"""`planflow server up | down | status` (the embedded Prefect server) and `planflow env`."""

from __future__ import annotations

import shlex

import typer

from planflow.cli.common import console, fail, say
from planflow.ops import server as stack
from planflow.settings import DEFAULT_HOST, DEFAULT_PORT, StatePaths, client_env

server_app = typer.Typer(help="The embedded Prefect server (SQLite, project-local).", no_args_is_help=True)


@server_app.command("up")
def server_up(
    host: str = typer.Option(DEFAULT_HOST, help="Address to listen on."),
    port: int = typer.Option(DEFAULT_PORT, help="Port to listen on."),
) -> None:
    """Start the embedded Prefect server (reused when already running)."""
    before = stack.status()
    try:
        state = stack.up(host=host, port=port)
    except stack.StackError as exc:
        fail(str(exc))
    verb = "already running" if before.running else "started"
    console.print(f"Prefect server {verb}: {state.url} (pid {state.pid})")
    console.print(f"UI: {state.url.removesuffix('/api')}")


@server_app.command("down")
def server_down() -> None:
    """Stop the embedded Prefect server."""
    before = stack.status()
    stack.down()
    console.print("Prefect server stopped." if before.pid else "Prefect server was not running.")


@server_app.command("status")
def server_status() -> None:
    """Say whether the embedded server runs, where, and its health."""
    state = stack.status()
    paths = StatePaths.discover()
    say(f"state: {state.state}")
    if state.url:
        say(f"url:   {state.url}")
    if state.pid:
        say(f"pid:   {state.pid}")
    if state.detail:
        say(f"note:  {state.detail}")
    say(f"home:  {paths.home}")
    say(f"log:   {paths.log_file}")
    if not state.running:
        raise typer.Exit(3)


def env() -> None:
    """Print the exports that point `prefect` commands at the embedded server:
    `eval "$(planflow env)"`."""
    for key, value in client_env().items():
        say(f"export {key}={shlex.quote(value)}")
