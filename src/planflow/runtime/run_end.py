"""A run's last reporting goes on after its final state, as Prefect's own last logs do.

When a run's steps are done its reporters write what it did: the planned-versus-actual,
summary and totals artifacts, the progress artifact's last update, the history, the last
metrics push, the removal of its calendar entry. On a server still writing the run's task
states those requests took 0.25 s for 40 trivial components and 0.4 s for 400 (traced
request by request), a third of such a run, and its Completed state waited for them.
Prefect's flow engine sends a run's last logs after its final state; planflow's reporting
now ends the same way: the run's function returns once its steps are done, the reporters
go on on their threads, and the flow's final-state hook (`finish_reporting`, set by
`to_flow`) waits for them, bounded (EventBus.drain_timeout), before the flow's call returns
or its process ends. The run's artifacts exist when the call returns, as before.

A flow without that hook (a flow of one's own that calls `run_pipeline`, or one whose
hooks were replaced) waits for its reporting before it returns, as before; so does a run
left by an interrupt, a termination signal or Prefect's Abort (no final-state hook may
come in this process then), and its end's artifacts say what its steps did until then
(the runner hands the reporters each step's last record; steps not started are Pending, a step running then Crashed).
What no hook released (a state the server refused, e.g. a cancellation that came as the
run completed) is released when the process exits (atexit), or by the bus itself after
its drain timeout.

    if flow_run_id and hooked(flow):
        after_final_state(flow_run_id, close)   # close: lets the run's end reach the reporters, waits
    else:
        close()
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("planflow.runtime")

_lock = threading.Lock()
_pending: dict[str, list[Callable[[], None]]] = {}  # flow run id -> what its final state waits for


def finish_reporting(flow: Any, flow_run: Any, state: Any) -> None:
    """The flow's final-state hook (completed, failed, crashed, cancelled): wait for the
    run's reporting deferred by `after_final_state`."""
    finish_pending(str(flow_run.id))


def hooked(flow: Any) -> bool:
    """Whether every final state of `flow` (completed, failed, crashed, cancelled) calls
    `finish_reporting`."""
    kinds = ("on_completion_hooks", "on_failure_hooks", "on_crashed_hooks", "on_cancellation_hooks")
    return all(finish_reporting in (getattr(flow, kind, None) or []) for kind in kinds)


def after_final_state(flow_run_id: str, close: Callable[[], None]) -> None:
    """Leave `close` to the flow run's final-state hook (the flow is `hooked`)."""
    with _lock:
        _pending.setdefault(flow_run_id, []).append(close)


def finish_pending(flow_run_id: str) -> None:
    """Run what waits for this flow run's final state, in the order it was left (also at
    the start of a retry in the same process: an attempt's reporting ends before the next
    attempt plans)."""
    with _lock:
        closes = _pending.pop(flow_run_id, [])
    for close in closes:
        try:
            close()
        except Exception as exc:  # an observer never fails the run, nor its hooks
            logger.warning("the end of run %s's reporting failed: %s: %s", flow_run_id, type(exc).__name__, exc)


def _at_exit() -> None:
    """What no final-state hook released, before the process ends (e.g. a completion the
    server refused because a cancellation came first: no hook matches the state then)."""
    with _lock:
        pending = list(_pending)
    for flow_run_id in pending:
        finish_pending(flow_run_id)


atexit.register(_at_exit)
