"""`python -m planflow.monitoring.bridge --port 9095`: run the bridge."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn
from prefect.settings import PREFECT_API_URL, temporary_settings

from planflow.monitoring.bridge.app import DEFAULT_MAX_BODY_BYTES, SPOOL_FILE_NAME, create_app
from planflow.monitoring.bridge.token import TOKEN_FILE_NAME, resolve_token
from planflow.settings import StatePaths, apply_client_env


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    paths = StatePaths.discover()
    # Prefect read its settings when this module imported it: the embedded server's url
    # (which apply_client_env finds) is passed on explicitly, to the forwarder and to
    # the Secret block's client alike.
    api_url = args.prefect_api_url or apply_client_env(paths)["PREFECT_API_URL"]
    state_dir = args.state_dir or paths.home / "monitoring"
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        token = resolve_token(state_dir / TOKEN_FILE_NAME, args.token_secret_block)
    app = create_app(state_dir / SPOOL_FILE_NAME, token, api_url, max_body_bytes=args.max_body_bytes)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
