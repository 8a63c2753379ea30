"""The Prefect server as planflow starts it: Prefect's own `prefect server start`, with
one change on SQLite: every write transaction begins `IMMEDIATE` instead of `DEFERRED`.

Why (issue 14, measured): SQLite has one writer at a time. Prefect 3.8.8 opens its write
transactions `BEGIN DEFERRED` (`AioSqliteConfiguration.begin_transaction`, unless
`with_for_update`), and most of them read before they write: a slot increment reads its
limits and then updates them, a state change reads the run and then inserts the state.
Such a transaction holds a read snapshot when it first writes, and if another connection
holds the write lock or wrote since the snapshot, SQLite answers SQLITE_BUSY (or
SQLITE_BUSY_SNAPSHOT) at once: waiting could deadlock, so the busy timeout (60 s) is not
used. Prefect's API turns that into a 503 and its client sleeps 2 s, 4 s, 8 s... before
it tries again; a planflow run, which writes a few times as it starts while the server is
still storing the previous runs' task runs, lost seconds to this. `BEGIN IMMEDIATE` takes
the write lock before the first read, where no snapshot is held yet, so SQLite's busy
timeout queues writers one behind the other instead of failing them (Prefect's own
comment in `setup_sqlite` names this fix). Nothing is retried: a request runs once, as
in Prefect, so nothing it writes (concurrency slots) can be applied twice.

A session opened *inside* such a transaction (a nested read) begins `DEFERRED`: begun
IMMEDIATE it would wait for the write lock its own request holds, up to the busy timeout.

The change replaces two methods of Prefect's class, checked against prefect
`CHECKED_PREFECT`; `patch_sqlite_writes` fails at start-up, naming what moved, when that
code is not what it was (the server then does not start rather than run unpatched).
PostgreSQL servers are not touched (its transactions wait on row locks).

Run as `python -m planflow.ops.prefect_server server start --host H --port P` (any
`prefect` command line works).
"""

from __future__ import annotations

import contextvars
import inspect
import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

CHECKED_PREFECT = "3.8.8"
# What Prefect's methods must still say for the replacement to be the same code, made immediate.
_EXPECTED_SOURCE = {
    "begin_transaction": 'SQLITE_BEGIN_MODE.set("IMMEDIATE" if with_for_update else "DEFERRED")',
    "begin_sqlite_stmt": 'conn.exec_driver_sql(f"BEGIN {mode}")',
}


class PrefectChanged(RuntimeError):
    """Prefect's SQLite configuration is not the code this module was checked against."""


class _WriteTransaction:
    """The BEGIN mode of one `begin_transaction`: IMMEDIATE for the first connection that
    begins in it (the transaction's own session), DEFERRED for any session opened inside."""

    def __init__(self) -> None:
        self.begun = False

    def mode(self) -> str:
        if self.begun:
            return "DEFERRED"
        self.begun = True
        return "IMMEDIATE"


def patch_sqlite_writes() -> None:
    """Make Prefect's SQLite write transactions begin IMMEDIATE (see the module's text);
    raises PrefectChanged when the code it replaces moved or changed."""
    import prefect  # noqa: PLC0415 (the server's modules: only in the server's process)
    from prefect.server.database import configurations  # noqa: PLC0415

    config = getattr(configurations, "AioSqliteConfiguration", None)
    begin_mode = getattr(configurations, "SQLITE_BEGIN_MODE", None)
    problems = []
    if config is None or not isinstance(begin_mode, contextvars.ContextVar):
        problems.append("prefect.server.database.configurations has no AioSqliteConfiguration or SQLITE_BEGIN_MODE")
    else:
        for name, expected in _EXPECTED_SOURCE.items():
            method = config.__dict__.get(name)
            source = inspect.getsource(method) if method is not None else ""
            if expected not in source:
                problems.append(f"AioSqliteConfiguration.{name} no longer contains {expected!r}")
    if problems:
        raise PrefectChanged(
            f"planflow's SQLite change was checked against prefect {CHECKED_PREFECT}, this is "
            f"prefect {prefect.__version__}: {'; '.join(problems)}. Fix: install prefect=={CHECKED_PREFECT} "
            "(constraints.txt), or re-check src/planflow/ops/prefect_server.py against this version"
        )
    assert config is not None and begin_mode is not None

    @asynccontextmanager
    async def begin_transaction(
        self: Any, session: Any, with_for_update: bool = False
    ) -> AsyncGenerator[Any, None]:  # `with_for_update` is kept for the signature: every write is immediate now
        token = begin_mode.set(_WriteTransaction())
        try:
            async with session.begin() as transaction:
                yield transaction
        finally:
            begin_mode.reset(token)

    def begin_sqlite_stmt(self: Any, conn: Any) -> None:
        mode = begin_mode.get()
        if isinstance(mode, _WriteTransaction):
            mode = mode.mode()
        if mode is not None:  # None: a plain read, left to SQLite's autocommit as in Prefect
            conn.exec_driver_sql(f"BEGIN {mode}")

    config.begin_transaction = begin_transaction
    config.begin_sqlite_stmt = begin_sqlite_stmt


def main() -> Any:
    """Prefect's command line (it reads `sys.argv`), its SQLite writes made immediate."""
    patch_sqlite_writes()
    from prefect.cli import app  # noqa: PLC0415 (the whole CLI: only when it starts)

    return app()


if __name__ == "__main__":
    sys.exit(main())
