"""The one bounded wait that returns what it waited for, or fails loudly.

    >>> wait_for(lambda: 42, 5, "the answer")
    42

`processes.wait_until` is its quiet sibling: a yes or no, the caller says what timed out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_fixed

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
) -> T:
    """Call `check` every `interval` seconds until it returns something true (returned),
    for at most `timeout` seconds; then raise `error` with a message naming `what` and
    the last value `check` returned. An exception `check` raises ends the wait at once."""

    def timed_out(state: RetryCallState) -> NoReturn:
        last = state.outcome.result() if state.outcome is not None else None
        seen = repr(last)
        seen = seen if len(seen) <= LAST_SHOWN else seen[: LAST_SHOWN - 3] + "..."
        raise error(f"timed out after {timeout:g} s waiting for {what} (last: {seen})")

    return Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_result(lambda value: not value),
        retry_error_callback=timed_out,
    )(check)
