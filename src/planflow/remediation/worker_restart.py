"""Starting Prefect's worker again when it stops, for the remediation worker.

Prefect's worker exits at once on a 4xx from its server (its pool gone: the project's
server started on a new database), and after many failed polls in a row (its client
retries each for about a minute: an outage of 5 minutes was outlived). The alert path
then had no worker until the next `planflow stack up`. `keep_running` runs an attempt
again after RESTART_SECONDS, doubling up to RESTART_MAX_SECONDS (back to the first after
it served a while), each time a line saying why. It does not when a restart cannot help
(401/403: the credentials; the process then exits, and `stack up` starts a worker with
the right ones) or when it was asked to stop (Ctrl-C)."""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable

RESTART_SECONDS = 2.0
RESTART_MAX_SECONDS = 30.0
CREDENTIALS = (401, 403)  # a restart with the same settings meets the same answer


def leaves(exc: BaseException, seen: frozenset[int] = frozenset()) -> list[BaseException]:
    """The exceptions inside `exc`: the members of (nested) groups, each cancellation a
    task group raised on the way out replaced by what it interrupted."""
    seen = seen | {id(exc)}
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for member in exc.exceptions if id(member) not in seen for leaf in leaves(member, seen)]
    context = exc.__context__
    if type(exc).__name__ == "CancelledError" and context is not None and id(context) not in seen:
        return leaves(context, seen)
    return [exc]


def root_cause(exc: BaseException) -> BaseException:
    """The first leaf that is not a cancellation (else the first)."""
    found = leaves(exc)
    return next((e for e in found if type(e).__name__ != "CancelledError"), found[0])


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an answer that ended an attempt, if one did."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def asked_to_stop(exc: BaseException) -> bool:
    """Ctrl-C or an exit (SIGTERM ends the process without one)."""
    return any(isinstance(e, KeyboardInterrupt | SystemExit) for e in leaves(exc))


def describe(exc: BaseException) -> str:
    """`exc`'s root cause in one line."""
    cause = root_cause(exc)
    text = str(cause).splitlines()[0] if str(cause) else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _say(line: str) -> None:
    print(f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S}Z {line}", file=sys.stderr, flush=True)


def keep_running(
    attempt: Callable[[], None],
    label: str,
    restarts: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = _say,
) -> None:
    """Run `attempt` until it returns; after it raises, again (see the module docstring).
    `restarts` bounds the restarts (None: as long as the process lives)."""
    delay, done = RESTART_SECONDS, 0
    while True:
        began = time.monotonic()
        try:
            attempt()
            return
        except BaseException as exc:
            if asked_to_stop(exc) or (restarts is not None and done >= restarts):
                raise
            status = status_of(root_cause(exc))
            if status in CREDENTIALS:
                say(
                    f"{label}: Prefect's worker stopped ({describe(exc)}): its server refuses these credentials; "
                    "exiting. Fix: PREFECT_API_AUTH_STRING (or PREFECT_API_KEY) for this server, then "
                    "`planflow stack up` starts the worker again"
                )
                raise
            if time.monotonic() - began > 10 * RESTART_MAX_SECONDS:
                delay = RESTART_SECONDS
            say(f"{label}: Prefect's worker stopped ({describe(exc)}); starting it again in {delay:g} s")
            sleep(delay)
            delay, done = min(2 * delay, RESTART_MAX_SECONDS), done + 1
