"""The `planflow` command line: one module per command group, mounted by `app`.

`main()` is the console script. It points Prefect's client at the project's embedded
server (unless the user exported PREFECT_API_URL) before Prefect is imported, since
Prefect reads its settings once, when it is first imported; that is why the command
tree is imported inside `main` and not at the top of this module.
"""

from __future__ import annotations

import sys

from planflow.settings import SettingsError, apply_client_env


def main() -> None:  # pragma: no cover - console script entry
    try:
        apply_client_env()
    except SettingsError as exc:  # a bad PLANFLOW_* value: say which, before any command
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    # Prefect reads its settings at import: the commands (which import Prefect) must
    # come after apply_client_env().
    from planflow.cli.app import app  # noqa: PLC0415
    from planflow.cli.common import quiet_exit_flush  # noqa: PLC0415

    quiet_exit_flush()
    app()
