"""The logger whose lines go to the flow run's log (the Prefect UI's run page)."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.context import FlowRunContext


def run_logger(fallback: str = "planflow") -> logging.Logger | logging.LoggerAdapter:
    """The current flow run's logger; outside a flow run, the logger named `fallback`."""
    return get_run_logger() if FlowRunContext.get() is not None else logging.getLogger(fallback)
