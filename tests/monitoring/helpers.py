"""Shared helpers of the monitoring tests: real processes and servers, nothing faked."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from planflow.monitoring.events import read_events  # noqa: F401  (re-exported for the tests)
from planflow.ops import waiting

IN_CI = os.environ.get("CI", "").lower() == "true"
APT = "apt-get install -y prometheus prometheus-alertmanager prometheus-pushgateway"


def need_binary(*names: str) -> str:
    """The first binary found of `names`; skips (fails under CI=true) when none is."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    message = f"{' or '.join(names)} not installed. Fix: {APT} (or bash scripts/install-services.sh)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


class ThreadedServer:
    """Run an ASGI app with uvicorn in a thread: a real HTTP server on loopback."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


# `planflow serve`'s replicas are scraped too, and are down unless a pipeline is served.
SERVING_JOB = "planflow-serving"


def stack_targets_up(prometheus_url: str, expected: int | None = None) -> bool:
    """Every scrape target of the stack is up (the serving replicas' aside); `expected`:
    how many there must be."""
    found = httpx.get(f"{prometheus_url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    stack = [t for t in found if t.get("labels", {}).get("job") != SERVING_JOB]
    return (expected is None or len(stack) == expected) and all(t["health"] == "up" for t in stack)


# The one bounded wait (planflow.ops.waiting), failing the test, polling faster than the
# stack's; a check whose request to a busy service fails (a timeout, a reset) asks again.
wait_for = functools.partial(waiting.wait_for, interval=0.25, error=AssertionError, retry_on=(httpx.TransportError,))


def alert(
    status: str = "firing", fingerprint: str = "abc123", starts: datetime | None = None, **labels: str
) -> dict[str, Any]:
    starts = starts or datetime(2030, 1, 1, tzinfo=UTC)
    ends = starts + timedelta(minutes=5) if status == "resolved" else datetime(1, 1, 1, tzinfo=UTC)
    return {
        "status": status,
        "labels": {"alertname": "PlanflowTestAlert", "severity": "warning", **labels},
        "annotations": {"summary": "a test alert", "description": "raised by the tests"},
        "startsAt": starts.isoformat().replace("+00:00", "Z"),
        "endsAt": ends.isoformat().replace("+00:00", "Z") if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": fingerprint,
    }


def webhook(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "status": alerts[0]["status"] if alerts else "firing",
        "receiver": "planflow-bridge",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }


from planflow.ops.server import free_port  # noqa: E402,F401  (re-exported for the tests)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    import subprocess

    binary = need_binary("promtool")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def promtool_check_metrics(exposition: bytes) -> subprocess.CompletedProcess[bytes]:
    """`promtool check metrics` on an exposition (lint: naming, help, units)."""
    import subprocess

    binary = need_binary("promtool")
    return subprocess.run([binary, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
