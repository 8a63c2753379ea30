"""The flow's task runner: Prefect's ThreadPoolTaskRunner, which an interrupt does not hold.

Prefect's ThreadPoolTaskRunner ends by shutting its thread pool down and waiting for
every task still running. Python cannot stop a thread, so on Ctrl-C (or the SIGTERM of
a cancellation) the flow run stayed Running, its Crashed state and its hooks held back,
until each in-process component had finished by itself: a `planflow run` interrupted
12 s into two 40 s components said it was interrupted 28 s later. On such an interrupt
this runner lets the running tasks go (their cancel events set, the tasks not started
dropped) and does not wait: the flow run ends at once, and `planflow run` leaves without
them (cli/interrupt.py). A run that ends any other way waits for its tasks, as Prefect's.
"""

from __future__ import annotations

from typing import Any

from prefect.exceptions import TerminationSignal
from prefect.task_runners import ThreadPoolTaskRunner

INTERRUPTS = (KeyboardInterrupt, SystemExit, TerminationSignal)


class InterruptibleThreadPoolTaskRunner(ThreadPoolTaskRunner):
    """ThreadPoolTaskRunner that, left by an interrupt, does not wait for its running tasks."""

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None and exc_type is not None and issubclass(exc_type, INTERRUPTS):
            for event in getattr(self, "_cancel_events", {}).values():
                event.set()
            executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        super().__exit__(exc_type, exc_value, traceback)
