"""What every command group shares: the consoles, `fail`, and the server a command uses."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.rule import Rule

from planflow.ops import server as stack
from planflow.settings import StatePaths, user_api_url

# Width when the output goes to a pipe or a file and COLUMNS is unset: rich's 80 would
# cut tables and links; a table is only as wide as its content, so a wide limit costs nothing.
PIPE_WIDTH = 4000
RULE_WIDTH = 100  # section rules: one screen wide, also in a file


def make_console(stderr: bool = False) -> Console:
    """A rich Console that keeps whole lines when its stream is not a terminal (rich
    falls back to 80 columns there): the width is COLUMNS when set, else PIPE_WIDTH."""
    stream = sys.stderr if stderr else sys.stdout
    interactive = hasattr(stream, "isatty") and stream.isatty()
    width = None if interactive or os.environ.get("COLUMNS", "").isdigit() else PIPE_WIDTH
    return Console(stderr=stderr, width=width)


console = make_console()
err = make_console(stderr=True)


def say(message: str) -> None:
    """Print `message` as it is: no markup, no highlighting, no line breaks added
    (a user's text may hold `[brackets]`, and scripts grep whole lines)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """Print `message` to stderr as it is (see `say`)."""
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def rule(title: str) -> None:
    """A section heading: a rule with `title`, at most RULE_WIDTH wide."""
    console.print(Rule(escape(title)), width=min(console.width, RULE_WIDTH))


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: MESSAGE` to stderr and exit with `code` (no traceback)."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def check_writable(path: Path, option: str) -> None:
    """Fail (code 2) before any work when file `path`, given as `option`, cannot be written:
    its folder missing or not writable, or a folder in its place."""
    folder = path.parent if str(path.parent) else Path(".")
    why = ""
    if path.is_dir():
        why = "it is a folder"
    elif not folder.is_dir():
        why = f"folder {folder} does not exist"
    elif not os.access(folder, os.W_OK):
        why = f"folder {folder} is not writable"
    if why:
        fail(
            f"{option} {path}: cannot write it ({why}). Fix: a file in a folder you can write, e.g. {option} plan.png",
            2,
        )


def write_file(path: Path, data: bytes, option: str) -> None:
    """Write `data` to `path` (given as `option`); a clear error, not a traceback, when it cannot be."""
    try:
        path.write_bytes(data)
    except OSError as exc:
        fail(f"{option} {path}: cannot write it ({exc.strerror or exc}). Fix: a file in a folder you can write", 1)


RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")  # the loggers of flow and task runs


class _DropRunLogs(logging.Filter):
    """Drops the log records of flow and task runs (they still reach the server)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(RUN_LOGGERS)


class _DropRunTracebacks(logging.Filter):
    """Drops the flow and task runs' log records that carry a traceback (they still reach
    the server, where the run's log keeps them); their other lines pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.name.startswith(RUN_LOGGERS))


@contextmanager
def stdout_on_stderr(on: bool = True) -> Iterator[None]:
    """Within (when `on`): whatever writes to this process's stdout, its components' print()
    and the processes it starts (an isolated step's child, the forkserver) alike, goes to
    stderr, so that a command's own output (`run --json`) stays alone on stdout."""
    if not on:
        yield
        return
    sys.stdout.flush()
    kept = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(kept, 1)
        os.close(kept)


class _DropHookLines(logging.Filter):
    """Prefect says each hook of a run as it starts and ends ("Running hook
    '_stop_watchdog' in response to entering state 'Completed'", "Hook ... finished
    running successfully"): planflow's own hooks, four lines of noise at every run's end
    in the terminal. They still reach the server; a hook that fails is still said."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(RUN_LOGGERS):
            return True
        message = record.getMessage()
        return not (message.startswith("Running hook '") or message.endswith("finished running successfully"))


@contextmanager
def run_logs_off_the_terminal(tracebacks_only: bool = False) -> Iterator[None]:
    """Within: the runs' log lines (and tracebacks) go to the Prefect server only, not
    to the terminal; for a run whose failure is expected, and said in one line. With
    `tracebacks_only`, the runs' other lines still show (`planflow run`'s progress): a
    failed run is said in one line with the address of its log."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    filters = [_DropRunTracebacks(), _DropHookLines()] if tracebacks_only else [_DropRunLogs()]
    for handler in handlers:
        for quiet in filters:
            handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            for quiet in filters:
                handler.removeFilter(quiet)


class _DropDrainProgress(logging.Filter):
    """Prefect's event and log workers say "Still processing items: N items
    remaining..." while they flush at exit; the items are sent all the same, so the
    line is noise at the end of every command. Their other warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Still processing items")


def quiet_exit_flush() -> None:
    """Install the filter on the loggers of Prefect's queue services (named after the class)."""
    for name in ("EventsWorker", "APILogWorker"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropDrainProgress) for f in logger.filters):
            logger.addFilter(_DropDrainProgress())


def ensure_server(same_as_env: bool = True) -> str:
    """The API URL to use: the user's PREFECT_API_URL if set (it must answer), else
    this project's embedded server, started when needed. With `same_as_env`, a server
    that started somewhere else than this process's Prefect settings point is an error
    (a command that passes the URL on explicitly, like `worker start`, sets it False)."""
    chosen = user_api_url()
    if chosen:
        problem = stack.health_problem(chosen)
        if problem:
            fail(f"the Prefect server at {chosen} (PREFECT_API_URL) does not answer: {problem[0]}. Fix: {problem[1]}.")
        return authorized(chosen)
    current = stack.status()
    if current.running and current.url:
        return authorized(current.url)
    if current.state == "unhealthy":  # said: the wait ran minutes without a word, then a new server came
        warn(
            f"The embedded Prefect server (pid {current.pid}) runs but {current.url}/health does not answer: "
            f"waiting up to {stack.UP_TIMEOUT_SECONDS:.0f} s for it, then it is stopped and started again "
            f"(its log: {StatePaths.discover().log_file}) ..."
        )
    else:
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


def authorized(url: str) -> str:
    """`url`, once its server takes this process's credentials; a clear error when its API
    auth is on and they are missing or wrong (every command met a raw 401 traceback)."""
    if stack.auth_refused(url):
        fail(
            f"the Prefect server at {url} has API auth on and refused this command's credentials "
            "(401 Unauthorized). Fix: export PREFECT_API_AUTH_STRING='user:password', the value of the "
            "server's PREFECT_SERVER_API_AUTH_STRING (or `prefect config set PREFECT_API_AUTH_STRING=...`)"
        )
    return url


def ui_url(api_url: str) -> str:
    """The Prefect UI's address for an API URL (…/api)."""
    return api_url.removesuffix("/api")


def run_url(ui: str, flow_run_id: str, tab: str = "Artifacts") -> str:
    """The page of one flow run, opened on `tab` (Artifacts, Logs, TaskRuns, Details, ...).

    Prefect 3.8 serves two UIs. Its new one (under `/v2` by default) reads the `tab`
    query of `/runs/flow-run/<id>`; the old one, which answers deep links at the root,
    hides the Artifacts tab until the run has loaded (its FlowRun page), so the link
    lands on Logs. The
    server's `/ui-settings` says where the new UI is; without it, the root path."""
    base = _v2_base(ui)
    if base is None:
        return f"{ui}/runs/flow-run/{flow_run_id}?tab={tab}"
    return f"{ui}{base.rstrip('/')}/runs/flow-run/{flow_run_id}?tab={tab}"


_V2_BASES: dict[str, str | None] = {}


def _v2_base(ui: str) -> str | None:
    if ui not in _V2_BASES:
        try:
            answer = httpx.get(f"{ui}/ui-settings", timeout=3.0)
            base = answer.json().get("v2_base_url") if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            base = None
        _V2_BASES[ui] = base if isinstance(base, str) and base.startswith("/") else None
    return _V2_BASES[ui]
