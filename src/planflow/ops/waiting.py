"""The one bounded wait that returns what it waited for, or fails loudly.

    >>> wait_for(lambda: 42, 5, "the answer")
    42

`processes.wait_until` is its quiet sibling: a yes or no, the caller says what timed out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

T = TypeVar("T")
LAST_SHOWN = 300  # characters of the last value a timed-out wait names (a list of runs can be long)


class WaitTimeoutError(TimeoutError):
    """A bounded wait ran out; the message says for what, and what it last saw."""


def wait_for(
    check: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 1.0,
    error: Callable[[str], Exception] = WaitTimeoutError,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `check` every `interval` seconds until it returns something true (returned),
    for at most `timeout` seconds; then raise `error` with a message naming `what` and
    the last value `check` returned (or raised). An exception `check` raises ends the wait
    at once, unless it is one of `retry_on` (e.g. httpx.TransportError for a check that
    asks a busy service): that counts as a false answer."""

    def timed_out(state: RetryCallState) -> NoReturn:
        outcome = state.outcome
        last = None if outcome is None else outcome.exception() if outcome.failed else outcome.result()
        seen = repr(last)
        seen = seen if len(seen) <= LAST_SHOWN else seen[: LAST_SHOWN - 3] + "..."
        raise error(f"timed out after {timeout:g} s waiting for {what} (last: {seen})")

    return Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_result(lambda value: not value) | retry_if_exception_type(retry_on),
        retry_error_callback=timed_out,
    )(check)
