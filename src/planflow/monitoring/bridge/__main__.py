"""`python -m planflow.monitoring.bridge --port 9095`: run the bridge."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import uvicorn
from prefect.settings import PREFECT_API_URL, temporary_settings

from planflow.monitoring.bridge.app import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_UNDELIVERED_AFTER,
    SPOOL_FILE_NAME,
    create_app,
)
from planflow.monitoring.bridge.token import TOKEN_FILE_NAME, TokenError, resolve_token
from planflow.monitoring.header_deadline import HEADER_SECONDS, with_header_deadline
from planflow.settings import PRIVATE_UMASK, StatePaths, apply_client_env

# HTTP limits of the server itself (the body's are the app's Guard)
KEEP_ALIVE_SECONDS = 5  # an idle connection is closed after this
INCOMPLETE_HEADER_BYTES = 16 * 1024  # h11 buffers no more of a request head still arriving
# Concurrent connections and requests; past it, requests get 503 (Alertmanager retries).
# Anyone who can reach the port counts here before its token is read, so the bound is
# the cost of holding connections: each is cut when its head (or the rest of a body the
# bridge answered without reading) is --header-timeout late, and with 64 places, 64
# half-sent heads denied the alert path; at 512 an attacker must reopen 512 connections
# every 10 s. What is left to deny is the network's to prevent (listen on 127.0.0.1, or
# a NetworkPolicy that admits only Alertmanager).
MAX_CONNECTIONS = 512


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Alertmanager webhook -> Prefect events.")
    parser.add_argument("--port", type=int, default=9095)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--prefect-api-url", default=None)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the spool and token file live (default: <.planflow>/monitoring)",
    )
    parser.add_argument(
        "--token-secret-block", default=None, help="name of a Prefect Secret block holding the bearer token"
    )
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument(
        "--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT, help="seconds a request body may take"
    )
    parser.add_argument(
        "--undelivered-after",
        type=float,
        default=DEFAULT_UNDELIVERED_AFTER,
        help="/ready fails once forwarding to Prefect has failed for this many seconds",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=HEADER_SECONDS,
        help="seconds a client has to send a whole request head; a slower one is disconnected",
    )
    parser.add_argument("--receiver", default=None, help="refuse webhooks of another Alertmanager receiver")
    parser.add_argument("--alertmanager-url", default=None, help="refuse webhooks whose externalURL differs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request to Prefect: 100 MB a day in its log
    os.umask(PRIVATE_UMASK)  # the spool and token file are the user's only
    paths = StatePaths.discover()
    # Prefect read its settings when this module imported it: the embedded server's url
    # (which apply_client_env finds) is passed on explicitly, to the forwarder and to
    # the Secret block's client alike.
    api_url = args.prefect_api_url or apply_client_env(paths)["PREFECT_API_URL"]
    state_dir = args.state_dir or paths.home / "monitoring"
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            token = resolve_token(state_dir / TOKEN_FILE_NAME, args.token_secret_block)
    except TokenError as exc:
        parser.exit(2, f"planflow bridge: {exc}\n")
    app = create_app(
        state_dir / SPOOL_FILE_NAME,
        token,
        api_url,
        max_body_bytes=args.max_body_bytes,
        body_timeout=args.body_timeout,
        undelivered_after=args.undelivered_after,
        receiver=args.receiver,
        alertmanager_url=args.alertmanager_url,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        lifespan="on",
        http=with_header_deadline(args.header_timeout),  # h11 (the header limit below is h11's) with a deadline
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        h11_max_incomplete_event_size=INCOMPLETE_HEADER_BYTES,
        limit_concurrency=MAX_CONNECTIONS,
    )


if __name__ == "__main__":
    main()
