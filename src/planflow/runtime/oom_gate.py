"""The gate a run again with more memory passes: guarded and audited like a remediation.

The distributed executor decides *what* a component killed for memory gets next
(oom.escalate: factor, cap, a bigger pool); *whether* it may happen now is the
remediation layer's (planflow.remediation.oom_retry): the AlertRoute `ComponentOomKilled`
through guard.py (attempts per component and run, cooldown, a rate limit over all runs,
dry run) and an audit trail like every remediation's (events, an artifact,
`planflow_remediations_total{action="oom-retry"}`). Runtime sits below remediation, so it
cannot import it: it asks a gate registered here. `planflow.remediation.oom_retry`
registers itself through the package's entry point (group `planflow.hooks`, name
`oom_gate`), found on first use in any process that runs a pipeline, and `register`
sets one by hand (tests, embedding). No gate, no retry: the step fails saying so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

HOOK_GROUP = "planflow.hooks"
HOOK_NAME = "oom_gate"


@dataclass(frozen=True)
class OomRetry:
    """A run again with more memory that the executor wants to make."""

    pipeline: str
    step: str
    pool: str  # where it was killed
    to_pool: str  # where it would run again
    was_gib: float
    now_gib: float
    retry: int  # 1 for the first run again
    where: str  # the kill, as the infrastructure reported it
    killed_run_id: str  # the child flow run that was killed
    parent_run_id: str  # the pipeline's flow run ("" outside a flow run)


@dataclass(frozen=True)
class GateAnswer:
    """`act`: run it again now; else `outcome` (the guard's: max_attempts, cooldown,
    rate_limited, dry_run, no_action) and why."""

    act: bool
    outcome: str
    reason: str


Gate = Callable[[OomRetry], GateAnswer]
_lock = threading.Lock()
_gate: Gate | None = None


class OomGateMissingError(RuntimeError):
    """No gate is registered, so no run again with more memory is made."""


def register(gate: Gate | None) -> Gate | None:
    """Set the gate (None: back to the entry point's); returns the one it replaces."""
    global _gate
    with _lock:
        previous, _gate = _gate, gate
    return previous


def current() -> Gate:
    """The registered gate, else the one the `planflow.hooks` entry point names."""
    global _gate
    with _lock:
        if _gate is None:
            found = [ep for ep in entry_points(group=HOOK_GROUP) if ep.name == HOOK_NAME]
            if not found:
                raise OomGateMissingError(
                    f"no OOM retry gate: no entry point '{HOOK_NAME}' in group '{HOOK_GROUP}', none registered. "
                    "Fix: install planflow as a package (pip install planflow, or pip install -e . in a "
                    "checkout) so that its entry point is registered"
                )
            _gate = found[0].load()
        return _gate


def ask(request: OomRetry) -> GateAnswer:
    """Whether `request` may be made now (the gate guards and audits it)."""
    return current()(request)
