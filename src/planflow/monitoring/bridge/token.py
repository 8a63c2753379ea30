"""The bridge's bearer token: from the environment, a Secret block, or a private file.

A token anyone could guess is refused: the placeholders that examples and manifests
ship (`change-me...`, `replace-me`, ...), and anything shorter than MIN_TOKEN_LENGTH.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path

from prefect.blocks.system import Secret

from planflow.settings import settings

log = logging.getLogger("planflow.bridge")
TOKEN_ENV = "PLANFLOW_BRIDGE_TOKEN"
TOKEN_FILE_NAME = "bridge.token"
MIN_TOKEN_LENGTH = 16
# Words of the placeholders manifests and READMEs ship instead of a real token.
PLACEHOLDER = re.compile(r"change-?me|replace-?me|placeholder|example|your-?token|^(secret|token|password)$", re.I)


class TokenError(ValueError):
    """The bearer token is a placeholder or too short to be secret."""


def check_token(token: str, source: str) -> str:
    """`token` when it can be secret; TokenError naming `source` and the fix otherwise."""
    fix = (
        f"Fix: put a random token there, e.g. `openssl rand -base64 32` "
        f"(at least {MIN_TOKEN_LENGTH} characters), and give Alertmanager the same one."
    )
    if PLACEHOLDER.search(token):
        raise TokenError(f"the bridge token from {source} is a placeholder ({token!r}), not a secret. {fix}")
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(
            f"the bridge token from {source} has {len(token)} characters; "
            f"fewer than {MIN_TOKEN_LENGTH} can be guessed. {fix}"
        )
    return token


def _keep_private(token_file: Path) -> None:
    """A token file others can read (copied in, restored from a backup, made under another
    umask) is made the user's only, and said: anyone who read it can forge alerts."""
    mode = token_file.stat().st_mode & 0o777
    if mode & 0o077:
        try:
            token_file.chmod(0o600)
        except OSError as exc:  # another user's file, a read-only mount (a Kubernetes Secret): said, used
            log.warning(
                "the bridge token file %s is readable by others (mode %o) and cannot be made private (%s). Fix: "
                "make it private (chmod 600), or mount it with defaultMode 0400",
                token_file,
                mode,
                exc.strerror or exc,
            )
            return
        log.warning(
            "the bridge token file %s was readable by others (mode %o): made private (600). Whoever read it can "
            "send alerts the bridge trusts. Fix: rotate it: delete the file and restart the bridge (it writes a "
            "new one), which Alertmanager's credentials_file must then name",
            token_file,
            mode,
        )


def resolve_token(token_file: Path, secret_block: str | None = None) -> str:
    """PLANFLOW_BRIDGE_TOKEN, else the Secret block, else the token file (created once)."""
    token = settings().bridge_token
    explicit = token.get_secret_value().strip() if token else ""
    if explicit:
        return check_token(explicit, TOKEN_ENV)
    if secret_block:
        return check_token(str(Secret.load(secret_block).get()).strip(), f"the Secret block {secret_block!r}")
    try:
        existing = token_file.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        _keep_private(token_file)
        return check_token(existing, str(token_file))
    token_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token
