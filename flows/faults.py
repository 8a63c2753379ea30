"""Fault injection: components that fail or stall on purpose, for demos and tests
of the monitoring and remediation loop (alerts, retries, failover)."""

from __future__ import annotations

import time

from planflow import component


@component(cpu=0.5, mem_gib=0.25, est_seconds=0.5)
def fail_on_purpose(reason: str = "injected failure: this step always fails") -> None:
    """Raise, always: a run that ends Failed."""
    raise RuntimeError(reason)


@component(cpu=0.5, mem_gib=0.25, est_seconds=5)
def stall(seconds: float = 5.0) -> float:
    """Take `seconds` doing nothing: a component that overruns its plan when its
    estimate is lower."""
    time.sleep(seconds)
    return seconds
