"""A throwaway Prefect server for one benchmark process (never the user's `.planflow/`).

    from bench.tempserver import TempServer
    server = TempServer("dispatch")      # sets PLANFLOW_HOME and PREFECT_API_URL: before Prefect is imported
    with server:                         # starts it; on exit drains Prefect's log/event workers, then stops it
        ...                              # (or server.start() ... server.stop())
    server.db = "postgres"               # the next start() runs it on PostgreSQL (same URL)

The state folder (the server's database, its log, the worker logs) is removed when the
benchmark's process exits (each left about 15-60 MB in the temporary folder);
PLANFLOW_BENCH_KEEP_STATE=1 keeps it, and says where, for a look after a failed run.

Draining before the server stops matters: Prefect sends logs and events from background
threads, and at interpreter exit they keep retrying a server that is gone, so the
benchmark process would not end.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from planflow.ops.server import free_port  # imports no Prefect


class TempServer:
    def __init__(self, name: str, db: str = "sqlite") -> None:
        self.db = db
        self.home = Path(tempfile.mkdtemp(prefix=f"planflow-bench-{name}-"))
        self.port = free_port()
        os.environ.update(
            PLANFLOW_HOME=str(self.home),
            PREFECT_API_URL=f"http://127.0.0.1:{self.port}/api",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            # uvicorn's access log: one line per request in the server's log, which the
            # benchmarks count by route (server_requests.py)
            PREFECT_SERVER_LOGGING_LEVEL="INFO",
        )
        os.environ.pop("PLANFLOW_BRIDGE_TOKEN", None)
        from planflow.settings import StatePaths, apply_client_env

        self.paths = StatePaths(self.home)
        apply_client_env(self.paths)
        atexit.register(self.remove)

    def remove(self) -> None:
        """At the process's exit: the state folder removed (its server stopped first, if
        still up), unless PLANFLOW_BENCH_KEEP_STATE=1."""
        if os.environ.get("PLANFLOW_BENCH_KEEP_STATE") == "1":
            print(f"the benchmark's server state is kept in {self.home}", file=sys.stderr)
            return
        try:
            from planflow.ops import server as stack

            stack.down(self.paths)
        except Exception as exc:  # a server that cannot be stopped keeps its folder
            print(f"the benchmark's server in {self.home} did not stop ({exc}); its folder is kept", file=sys.stderr)
            return
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> TempServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        from planflow.ops import server as stack

        stack.up(self.paths, port=self.port, db=self.db)

    def stop(self) -> None:
        from planflow.ops import server as stack

        try:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
        finally:
            stack.down(self.paths)
