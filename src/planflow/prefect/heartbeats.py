"""How often Prefect's flow runs send a heartbeat, as the process running them sees it.

Both the crash automation (remediation.automations.crash_after_seconds) and the calendar's
cleaning of runs that died silently (runtime.silent_runs) wait three of these before they
take a run for dead.
"""

from __future__ import annotations

import os

from prefect.settings import get_current_settings

MIN_HEARTBEAT_SECONDS = 30.0  # Prefect's smallest flow heartbeat frequency
DEFAULT_HEARTBEAT_SECONDS = 180.0


def flow_heartbeat_seconds() -> float:
    """PREFECT_FLOWS_HEARTBEAT_FREQUENCY (or PREFECT_RUNNER_HEARTBEAT_FREQUENCY) as the
    environment holds it now (Prefect's settings were read at import), else Prefect's
    setting, else 180 s; never below Prefect's 30 s."""
    frequency = float(get_current_settings().flows.heartbeat_frequency or DEFAULT_HEARTBEAT_SECONDS)
    for name in ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY"):
        try:
            return max(MIN_HEARTBEAT_SECONDS, float(os.environ[name]))
        except (KeyError, ValueError):
            continue
    return frequency
