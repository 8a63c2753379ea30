"""What every command group shares: the consoles, `fail`, and the server a command uses."""

from __future__ import annotations

import os
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from planflow.ops import server as stack
from planflow.settings import user_api_url

console = Console()
err = Console(stderr=True)


def say(message: str) -> None:
    """Print `message` as it is: no markup, no highlighting, no line breaks added
    (a user's text may hold `[brackets]`, and scripts grep whole lines)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """Print `message` to stderr as it is (see `say`)."""
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: MESSAGE` to stderr and exit with `code` (no traceback)."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def ensure_server(same_as_env: bool = True) -> str:
    """The API URL to use: the user's PREFECT_API_URL if set (it must answer), else
    this project's embedded server, started when needed. With `same_as_env`, a server
    that started somewhere else than this process's Prefect settings point is an error
    (a command that passes the URL on explicitly, like `worker start`, sets it False)."""
    chosen = user_api_url()
    if chosen:
        if not stack.healthy(chosen):
            fail(
                f"the Prefect server at {chosen} (PREFECT_API_URL) does not answer. Fix: "
                "start it, or unset PREFECT_API_URL to use the embedded server (`planflow server up`)."
            )
        return chosen
    current = stack.status()
    if current.running and current.url:
        return current.url
    warn("Starting the embedded Prefect server (planflow server up) ...")
    try:
        state = stack.up()
    except stack.StackError as exc:
        fail(str(exc))
    if same_as_env and state.url != os.environ["PREFECT_API_URL"]:
        fail(
            f"the embedded server runs at {state.url}, but this command was set up for "
            f"{os.environ['PREFECT_API_URL']}. Fix: run the command again."
        )
    return state.url


def ui_url(api_url: str) -> str:
    """The Prefect UI's address for an API URL (…/api)."""
    return api_url.removesuffix("/api")
