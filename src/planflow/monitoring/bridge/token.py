"""The bridge's bearer token: from the environment, a Secret block, or a private file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from prefect.blocks.system import Secret

from planflow.settings import settings

TOKEN_ENV = "PLANFLOW_BRIDGE_TOKEN"
TOKEN_FILE_NAME = "bridge.token"


def resolve_token(token_file: Path, secret_block: str | None = None) -> str:
    """PLANFLOW_BRIDGE_TOKEN, else the Secret block, else the token file (created once)."""
    token = settings().bridge_token
    explicit = token.get_secret_value().strip() if token else ""
    if explicit:
        return explicit
    if secret_block:
        return str(Secret.load(secret_block).get()).strip()
    try:
        existing = token_file.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token
