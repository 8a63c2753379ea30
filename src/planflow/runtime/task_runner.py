"""The flow's task runner: Prefect's ThreadPoolTaskRunner, which an interrupt does not hold.

Prefect's ThreadPoolTaskRunner ends by shutting its thread pool down and waiting for
every task still running. Python cannot stop a thread, so on Ctrl-C (or the SIGTERM of
a cancellation) the flow run stayed Running, its Crashed state and its hooks held back,
until each in-process component had finished by itself: a `planflow run` interrupted
12 s into two 40 s components said it was interrupted 28 s later. On such an interrupt
this runner lets the running tasks go (their cancel events set, the tasks not started
dropped) and does not wait: the flow run ends at once, and `planflow run` leaves without
them (cli/interrupt.py). The task runs it leaves are set Crashed, saying why (they stayed
Running under the Crashed flow run for good). A run that ends any other way waits for its
tasks, as Prefect's.
"""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import Future
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.exceptions import TerminationSignal
from prefect.states import Crashed
from prefect.task_runners import ThreadPoolTaskRunner

INTERRUPTS = (KeyboardInterrupt, SystemExit, TerminationSignal)
CRASH_SECONDS = 5.0  # the most spent setting the task runs left behind Crashed (a server gone: none)
LEFT = (
    "the flow run was interrupted while this task ran in a thread of its process, which Python cannot "
    "stop: it was left running, and its result is not kept"
)


class InterruptibleThreadPoolTaskRunner(ThreadPoolTaskRunner):
    """ThreadPoolTaskRunner that, left by an interrupt, does not wait for its running tasks."""

    def __enter__(self) -> InterruptibleThreadPoolTaskRunner:
        self._running: dict[UUID, Future[Any]] = {}  # task run id -> its thread's future, until done
        super().__enter__()
        return self

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        future = super().submit(*args, **kwargs)
        running, key = self._running, future.task_run_id
        running[key] = future.wrapped_future
        future.wrapped_future.add_done_callback(lambda _: running.pop(key, None))
        return future

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None and exc_type is not None and issubclass(exc_type, INTERRUPTS):
            for event in getattr(self, "_cancel_events", {}).values():
                event.set()
            executor.shutdown(wait=False, cancel_futures=True)  # the tasks not started are dropped
            self._executor = None
            left = [key for key, future in list(getattr(self, "_running", {}).items()) if not future.done()]
            if left:
                _crash_within(left, CRASH_SECONDS)
        super().__exit__(exc_type, exc_value, traceback)


def _crash_within(task_run_ids: list[UUID], seconds: float) -> None:
    """Set each task run Crashed, on a thread given at most `seconds` (the interrupt may
    be the server's loss: then nothing is set, and the wait has its bound)."""

    def crash() -> None:
        try:
            with get_client(sync_client=True) as client:
                for task_run_id in task_run_ids:
                    try:
                        client.set_task_run_state(task_run_id, Crashed(message=LEFT), force=True)
                    except Exception:  # not recorded yet (its events still queued), or the server gone
                        continue
        except Exception:  # no client at all: the run's own Crashed state says what happened
            return

    context = contextvars.copy_context()  # the run's Prefect settings (its API URL) go with it
    thread = threading.Thread(target=context.run, args=(crash,), name="planflow-crash-left-tasks", daemon=True)
    thread.start()
    thread.join(seconds)
