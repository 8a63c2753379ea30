"""Asking a serving process how it is: whether it answers, is ready, and whose model it serves.

`planflow serve` waits on these for its replicas and its balancer; the serving tests and
benchmark wait on them for replicas they kill or swap.

    >>> ready("http://127.0.0.1:8000")                    # doctest: +SKIP
    True
    >>> served_run("http://127.0.0.1:8001")               # doctest: +SKIP
    '3f1c...'
"""

from __future__ import annotations

import httpx

PROBE_SECONDS = 2.0  # the most one probe waits for its answer


def answers(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether GET `url` answers 200 within `timeout` seconds (no answer: False)."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def ready(base: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether the serving process at `base` (e.g. http://127.0.0.1:8000) is ready: it has
    a model and answers /predict."""
    return answers(f"{base}/readyz", timeout)


def served_run(base: str, timeout: float = PROBE_SECONDS) -> str | None:
    """The flow run id whose model the serving process at `base` serves; None when it does
    not answer, is not ready, or says no run."""
    try:
        body = httpx.get(f"{base}/readyz", timeout=timeout).json()
        return str(body["run"]["flow_run_id"])
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return None
