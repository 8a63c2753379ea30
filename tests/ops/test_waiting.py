"""ops/waiting.py: the one bounded wait returns what it waited for, or fails loudly."""

from __future__ import annotations

import itertools

import pytest

from planflow.ops.waiting import WaitTimeoutError, wait_for
from planflow.remediation.heal_watch import LOOK_AROUND, HealError
from planflow.remediation.heal_watch import wait_for as heal_wait_for


def test_returns_the_first_true_value():
    calls = itertools.count(1)
    assert wait_for(lambda: (n := next(calls)) >= 3 and n, 5, "the third call", interval=0) == 3


def test_a_timeout_names_what_it_waited_for_and_the_last_value():
    with pytest.raises(WaitTimeoutError, match=r"timed out after 0.2 s waiting for the spool to drain \(last: \[\]\)"):
        wait_for(lambda: [], 0.2, "the spool to drain", interval=0.05)


def test_the_caller_chooses_the_error():
    with pytest.raises(AssertionError, match="waiting for a test's condition"):
        wait_for(lambda: None, 0.1, "a test's condition", interval=0.05, error=AssertionError)
    with pytest.raises(HealError, match=r"waiting for a worker \(last: 0\)\. Look at") as raised:
        heal_wait_for(lambda: 0, 0.1, "a worker", 0.05)
    assert str(raised.value).endswith(LOOK_AROUND)


def test_an_exception_of_the_check_ends_the_wait_at_once():
    def broken() -> None:
        raise ValueError("the server answered 500")

    with pytest.raises(ValueError, match="500"):
        wait_for(broken, 60, "an answer")


def test_an_exception_named_in_retry_on_is_a_false_answer_and_is_named_at_the_timeout():
    calls = itertools.count(1)

    def flaky() -> int:
        n = next(calls)
        if n < 3:
            raise ConnectionResetError("busy")
        return n

    assert wait_for(flaky, 5, "an answer", interval=0, retry_on=(ConnectionError,)) == 3

    def refused() -> None:
        raise ConnectionRefusedError("nothing listens")

    with pytest.raises(WaitTimeoutError, match=r"waiting for an answer \(last: ConnectionRefusedError"):
        wait_for(refused, 0.2, "an answer", interval=0.05, retry_on=(ConnectionError,))
    with pytest.raises(ValueError):  # not named: still ends the wait at once
        wait_for(lambda: int("x"), 60, "an answer", retry_on=(ConnectionError,))
