"""Fixtures of the monitoring tests: the real services, on free loopback ports."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.monitoring.helpers import free_port, need_binary


@pytest.fixture(scope="session")
def monitoring_stack(prefect_server):
    """Prometheus, Alertmanager, Pushgateway, exporter and bridge (fast profile) in a
    state folder of their own, watching the session's Prefect server."""
    need_binary("prometheus")
    need_binary("prometheus-alertmanager", "alertmanager")
    need_binary("prometheus-pushgateway", "pushgateway")
    from monitoring import services
    from planflow.config import StatePaths

    paths = StatePaths(Path(tempfile.mkdtemp(prefix="planflow-monitoring-")))
    ports = {name: free_port() for name in services.ORDER}
    try:
        started = services.up(paths, profile="fast", ports=ports)
        yield paths, started
    finally:
        services.down(paths)


@pytest.fixture(scope="session")
def prefect_api_url(prefect_server) -> str:
    return os.environ["PREFECT_API_URL"].rstrip("/")
