"""`planflow server up | down | status` (the embedded Prefect server) and `planflow env`."""

from __future__ import annotations

import shlex

import typer

from planflow.cli.common import console, fail, say
from planflow.ops import server as stack
from planflow.settings import DEFAULT_HOST, DEFAULT_PORT, StatePaths, client_env

server_app = typer.Typer(
    help="The embedded Prefect server (project-local; SQLite, or PostgreSQL with --db postgres).",
    no_args_is_help=True,
)


@server_app.command("up")
def server_up(
    host: str = typer.Option(DEFAULT_HOST, help="Address to listen on."),
    port: int = typer.Option(DEFAULT_PORT, min=1, max=65535, help="Port to listen on."),
    db: str | None = typer.Option(
        None,
        help="The server's database: sqlite (a file in the state folder) or postgres (the scale-out "
        "profile for many concurrent runs: Debian's PostgreSQL, started and stopped by planflow) "
        "[default: the one the project's server last ran on, else sqlite].",
    ),
) -> None:
    """Start the embedded Prefect server (reused when already running)."""
    before, paths = stack.status(), StatePaths.discover()
    db = db or stack.chosen_database(paths)
    note = None if before.running or db not in stack.DATABASES else stack.new_database_note(paths, db)
    try:
        state = stack.up(host=host, port=port, db=db)
    except stack.StackError as exc:
        fail(str(exc))
    verb = "already running" if before.running else "started"
    console.print(f"Prefect server {verb}: {state.url} (pid {state.pid}, database {db})")
    console.print(f"UI: {state.url.removesuffix('/api')}")
    if state.detail:  # the runs lost when it stopped, now marked Crashed
        console.print(f"note: {state.detail}")
    if note:
        console.print(f"note: {note}")


@server_app.command("down")
def server_down() -> None:
    """Stop the embedded Prefect server (and its PostgreSQL, if it has one)."""
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
        say(f"db:    {paths.recorded().get('db', 'sqlite')}")
    if state.detail:
        say(f"note:  {state.detail}")
    say(f"home:  {paths.home}")
    say(f"log:   {paths.log_file}")
    if not state.running:
        raise typer.Exit(3)


def env() -> None:
    """Print the exports that point `prefect` commands at the embedded server:
    `eval "$(planflow env)"`."""
    exports = client_env()
    for key, value in exports.items():
        say(f"export {key}={shlex.quote(value)}")
    url = exports["PREFECT_API_URL"]
    if stack.auth_refused(url, timeout=1.0):  # on stderr: `eval` takes stdout alone
        typer.echo(
            f"# the Prefect server at {url} asks for credentials that this shell does not send: also "
            "export PREFECT_API_AUTH_STRING='user:password' (the value the server was started with, in "
            "PREFECT_SERVER_API_AUTH_STRING; planflow never prints it)",
            err=True,
        )
