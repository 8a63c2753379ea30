"""A Dask run's end tells its workers to drop its context, waiting a bounded time (no
cluster needed: a client that never answers, or fails, stands for one)."""

from __future__ import annotations

import threading
import time

import pytest

from planflow.runtime import dask_submit
from planflow.runtime.dask_submit import RunSubmitter


class _Client:
    """A client that answers, fails, or never answers: then, as `distributed.Client.run`
    does (its `sync`), it gives up after `callback_timeout` with TimeoutError."""

    def __init__(self, answer: threading.Event | None = None, error: Exception | None = None) -> None:
        self.answer, self.error, self.calls = answer, error, []

    def run(self, function, *args, callback_timeout=None, **kwargs):
        self.calls.append((function, args, kwargs))
        if self.error is not None:
            raise self.error
        if self.answer is not None and not self.answer.wait(30 if callback_timeout is None else callback_timeout):
            raise TimeoutError(f"timed out after {callback_timeout} s.")
        return {}


def _submitter(client: _Client) -> RunSubmitter:
    submitter = object.__new__(RunSubmitter)  # no Prefect context to pickle here
    submitter.client, submitter.run = client, "run-1"
    return submitter


def test_the_workers_are_told_to_drop_the_runs_context():
    client = _Client()
    _submitter(client).close()
    assert client.calls == [(dask_submit.forget, ("run-1",), {"on_error": "ignore"})]


def test_the_close_asks_distributed_for_its_bound():
    """The bound is distributed's own (`callback_timeout` of the client's call), not a
    thread of planflow's around it."""
    seen = []

    class Bounded(_Client):
        def run(self, function, *args, callback_timeout=None, **kwargs):
            seen.append(callback_timeout)
            return super().run(function, *args, callback_timeout=callback_timeout, **kwargs)

    _submitter(Bounded()).close()
    assert seen == [dask_submit.FORGET_SECONDS]


def test_workers_that_do_not_answer_fail_the_close_within_its_bound_naming_it(monkeypatch):
    monkeypatch.setattr(dask_submit, "FORGET_SECONDS", 0.2)
    hung = threading.Event()
    began = time.monotonic()
    try:
        with pytest.raises(TimeoutError, match="run-1's context: no answer within 0.2 s"):
            _submitter(_Client(answer=hung)).close()
        assert time.monotonic() - began < 5
    finally:
        hung.set()
    with pytest.raises(TimeoutError, match="scheduler gone"):
        _submitter(_Client(error=OSError("scheduler gone"))).close()
