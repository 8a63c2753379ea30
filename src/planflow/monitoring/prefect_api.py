"""Where the Prefect API is and how to authenticate to it, read from Prefect's settings.

Prefect's settings already know both: PREFECT_API_URL (planflow points it at the
embedded server, see planflow.config) and PREFECT_API_AUTH_STRING (basic auth on a
self-hosted server) or PREFECT_API_KEY (a bearer key); how to trust its TLS certificate,
PREFECT_API_TLS_INSECURE_SKIP_VERIFY and PREFECT_API_SSL_CERT_FILE (`tls_verify`).
"""

from __future__ import annotations

import base64
import functools
import ssl

import httpx
from prefect.settings import get_current_settings


def _secret(value: object) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    text = getter() if getter else str(value)
    return text or None


def api_url(explicit: str | None = None) -> str:
    """The Prefect API url (ending in /api): `explicit`, else Prefect's PREFECT_API_URL."""
    if explicit:
        return explicit.rstrip("/")
    url = get_current_settings().api.url
    if not url:
        raise RuntimeError(
            "no Prefect API url: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) "
            "or start the embedded server with `planflow server up`."
        )
    return str(url).rstrip("/")


def auth_headers() -> dict[str, str]:
    """The Authorization header Prefect's own client would send (basic auth wins)."""
    settings = get_current_settings().api
    auth_string = _secret(settings.auth_string)
    if auth_string:
        token = base64.b64encode(auth_string.encode()).decode()
        return {"Authorization": f"Basic {token}"}
    key = _secret(settings.key)
    return {"Authorization": f"Bearer {key}"} if key else {}


def tls_settings() -> tuple[bool, str | None]:
    """Prefect's TLS settings for the API as the current context has them: whether to skip
    verifying the server's certificate (PREFECT_API_TLS_INSECURE_SKIP_VERIFY), and the CA
    file (PREFECT_API_SSL_CERT_FILE; None: certifi's)."""
    settings = get_current_settings().api
    return bool(settings.tls_insecure_skip_verify), settings.ssl_cert_file or None


def tls_verify(tls: tuple[bool, str | None] | None = None) -> ssl.SSLContext:
    """The TLS context Prefect's own client would use for the API (an httpx client's
    `verify`) under `tls` (tls_settings(); read now when None): no verification under
    PREFECT_API_TLS_INSECURE_SKIP_VERIFY, else the CA file PREFECT_API_SSL_CERT_FILE or
    certifi's (httpx's default). One per setting and process: building one loads the CA
    file, about 40 ms of CPU, which an httpx client built without `verify` spends at each
    construction (the run's server watchdog did, at every run's start)."""
    return _tls_context(*(tls if tls is not None else tls_settings()))


@functools.cache
def _tls_context(skip_verify: bool, cafile: str | None) -> ssl.SSLContext:
    if skip_verify:
        return httpx.create_ssl_context(verify=False)
    if cafile:
        return ssl.create_default_context(cafile=cafile)
    return httpx.create_ssl_context()  # certifi's CAs, as Prefect's client without a CA file
