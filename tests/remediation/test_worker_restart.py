"""The remediation worker's restarts of Prefect's worker (worker_restart.py): which
stops are restarted, which end the process, and what the log says. Pure: the attempts
raise what Prefect's worker raised (the real 404 is in tests/monitoring/test_monitoring_outage.py)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from planflow.remediation.worker_restart import RESTART_MAX_SECONDS, RESTART_SECONDS, describe, keep_running


def _answer(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:4200/api/work_pools/planflow-remediation/workers/heartbeat")
    return httpx.HTTPStatusError(f"{status} answer", request=request, response=httpx.Response(status, request=request))


def _as_the_task_group_raised_it(error: BaseException) -> BaseException:
    """A task group's exit: the error and, beside it, the cancellation it caused."""
    cancelled = asyncio.CancelledError("Cancelled via cancel scope")
    cancelled.__context__ = error
    return BaseExceptionGroup("unhandled errors in a TaskGroup", [cancelled, error])


def _run(errors: list[BaseException], restarts: int | None = None):
    said, slept = [], []
    left = list(errors)

    def attempt() -> None:
        if left:
            raise left.pop(0)

    keep_running(attempt, "worker w on p", restarts=restarts, sleep=slept.append, say=said.append)
    return said, slept


def test_a_stop_is_restarted_with_a_doubling_wait_and_said_with_its_cause():
    errors = [_as_the_task_group_raised_it(_answer(404)), RuntimeError("Service exceeded error threshold.")]
    errors += [httpx.ConnectError("All connection attempts failed")] * 5
    said, slept = _run(errors)
    assert slept == [RESTART_SECONDS * 2**i for i in range(4)] + [RESTART_MAX_SECONDS] * 3
    assert said[0].startswith("worker w on p: Prefect's worker stopped (HTTPStatusError: 404 answer); starting")
    assert "RuntimeError: Service exceeded error threshold." in said[1]


def test_refused_credentials_end_the_process_saying_the_fix():
    said, _ = [], []
    with pytest.raises(BaseExceptionGroup):
        keep_running(
            lambda: (_ for _ in ()).throw(_as_the_task_group_raised_it(_answer(401))),
            "worker w on p",
            sleep=lambda s: None,
            say=said.append,
        )
    assert len(said) == 1 and "refuses these credentials; exiting" in said[0] and "planflow stack up" in said[0]


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(0)])
def test_being_asked_to_stop_is_not_restarted(stop):
    with pytest.raises(type(stop)):
        _run([stop])


def test_a_bare_cancellation_is_restarted_and_said():
    said, slept = _run([asyncio.CancelledError()])
    assert slept == [RESTART_SECONDS] and "(CancelledError)" in said[0], said


def test_restarts_can_be_bounded_and_the_cause_reads_past_the_cancellation():
    error = _as_the_task_group_raised_it(_answer(404))
    assert describe(error) == "HTTPStatusError: 404 answer"
    with pytest.raises(BaseExceptionGroup):
        _run([error, error], restarts=1)
