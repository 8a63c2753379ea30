"""The filter of Prefect's thread-timeout warning remembers a bounded number of steps."""

from __future__ import annotations

import logging

from planflow.runtime import timeout_warning
from planflow.runtime.timeout_warning import IsolatedTimeouts


def _warning(run: str, task: str) -> logging.LogRecord:
    record = logging.LogRecord(
        "prefect.task_runs",
        logging.WARNING,
        __file__,
        1,
        "Timeout of 30 seconds configured for this task, which runs in a worker thread: it cannot interrupt it",
        None,
        None,
    )
    record.flow_run_id, record.task_name = run, task
    return record


def test_the_filter_forgets_the_oldest_steps_beyond_its_bound(monkeypatch):
    """A process that serves runs for months added one entry per isolated timed step, never removed."""
    monkeypatch.setattr(timeout_warning, "MAX_STEPS", 3)
    steps = IsolatedTimeouts()
    try:
        for i in range(5):
            steps.add("run", f"step-{i}")
        kept = [i for i in range(5) if not steps.filter(_warning("run", f"step-{i}"))]
        assert kept == [2, 3, 4]  # the newest three are still dropped, the two oldest forgotten
        steps.add("run", "step-2")  # added again: the newest once more
        steps.add("run", "step-5")
        assert not steps.filter(_warning("run", "step-2")) and steps.filter(_warning("run", "step-3"))
    finally:
        logging.getLogger(timeout_warning.PREFECT_TASK_LOGGER).removeFilter(steps)
