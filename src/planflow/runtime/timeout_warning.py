"""Prefect's warning that a task's timeout cannot interrupt a worker thread, left out for
the steps it is not true of.

Prefect warns, for every task with `timeout_seconds` that runs in a worker thread, that
the timeout "cannot interrupt blocking operations". A step with `isolation="process"`
runs in a child process that planflow kills at the timeout (isolation.py): for it the
warning said the opposite of what happens. Its line is dropped for those steps only
(by flow run and task name); thread steps keep it, as it is true of them.

    isolated_timeouts.add(flow_run_id, step)   # before the step's task is submitted
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

PREFECT_TASK_LOGGER = "prefect.task_runs"
WARNING_START = "Timeout of "  # Prefect's task engine: "Timeout of %s seconds configured ... worker thread"
# The steps remembered, newest kept: the warning comes as each attempt of a step starts,
# and a process that serves runs for months adds one per isolated step with a timeout.
MAX_STEPS = 10_000


class IsolatedTimeouts(logging.Filter):
    """Drops Prefect's worker-thread timeout warning for the (flow run, task name) added."""

    def __init__(self) -> None:
        super().__init__()
        self._steps: OrderedDict[tuple[str, str], None] = OrderedDict()  # an ordered set, at most MAX_STEPS
        self._lock = threading.Lock()
        self._installed = False

    def add(self, flow_run_id: str, task_name: str) -> None:
        with self._lock:
            self._steps[(flow_run_id, task_name)] = None
            self._steps.move_to_end((flow_run_id, task_name))
            while len(self._steps) > MAX_STEPS:
                self._steps.popitem(last=False)
            if not self._installed:
                logging.getLogger(PREFECT_TASK_LOGGER).addFilter(self)
                self._installed = True

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not str(record.msg).startswith(WARNING_START):
            return True
        key = (str(getattr(record, "flow_run_id", "")), str(getattr(record, "task_name", "")))
        return "worker thread" not in str(record.msg) or key not in self._steps


isolated_timeouts = IsolatedTimeouts()
