"""Whether the Prefect API this process points at answers, asked with Prefect's own
client (`api_healthcheck`), so the Prefect integration needs nothing from the layer
that starts the server (`planflow.ops`)."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL


class ServerNotAnswering(RuntimeError):
    """The Prefect API does not answer; the message says what to start."""


def api_url() -> str:
    """The Prefect API URL this process uses ('' when none is set)."""
    return PREFECT_API_URL.value() or ""


def require_server() -> str:
    """The API URL, or ServerNotAnswering saying how to start a server.

    Without PREFECT_API_URL Prefect's client would start a temporary server of its
    own, so that case is refused before any client is made."""
    url = api_url()
    if url:
        with get_client(sync_client=True) as client:
            error = client.api_healthcheck()
        if error is None:
            return url
        reason = f" ({type(error).__name__}: {error})"
    else:
        reason = ""
    raise ServerNotAnswering(
        f"the Prefect server at {url or '(PREFECT_API_URL not set)'} does not answer{reason}. "
        "Fix: start it with `planflow server up` (or point PREFECT_API_URL at your server)."
    )
