"""The remediation worker: a Prefect process worker that runs planflow's remediation
flows inside its own, already warm, Python process.

Prefect's process worker starts a new interpreter for every flow run (import Prefect,
load the entrypoint, run the pull steps): about 4-5 s on a 2-core machine, half of the
budget from an alert to its remediation. The remediation flows are few, known and part
of planflow, so this worker (a `ProcessWorker` of Prefect's, with the same polling,
heartbeats, Pending proposal, cancellation and crash handling) imports them once and
runs each flow run with Prefect's flow engine in a thread of its own. Flow runs of any
other flow on the pool are refused (Crashed with a message), as they need their own
process.

    python -m planflow.remediation.worker --pool planflow-remediation [--limit 4]

`planflow stack up` starts it (remediation/worker_process.py: worker_up). When Prefect's
worker stops (a 4xx such as its pool gone, a long outage), it is started again
(worker_restart.py).
"""

from __future__ import annotations

import argparse
import os
import threading
import warnings
from typing import Any

import anyio
from prefect.flow_engine import run_flow
from prefect.settings import PREFECT_WORKER_PREFETCH_SECONDS, PREFECT_WORKER_QUERY_SECONDS, temporary_settings
from prefect.workers.process import ProcessWorker, ProcessWorkerResult

from planflow.remediation.flows import REMEDIATION_FLOWS
from planflow.remediation.names import REMEDIATION_POOL
from planflow.remediation.worker_restart import keep_running


def remediation_flows() -> dict[str, Any]:
    """Flow name -> flow object of the remediation flows."""
    return {f.name: f for f in REMEDIATION_FLOWS.values()}


with warnings.catch_warnings():
    # Same worker type ("process", the pool's) as its parent: Prefect's registry says so.
    warnings.filterwarnings("ignore", message=".*matches existing registered type.*")

    class RemediationWorker(ProcessWorker):
        """Runs the remediation flows in-process (see the module docstring)."""

        _description = "Runs planflow's remediation flows in the worker's own warm process."

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._flows = remediation_flows()
            self._flow_names: dict[Any, str] = {}

        async def _flow_name(self, flow_id: Any) -> str:
            if flow_id not in self._flow_names:
                self._flow_names[flow_id] = (await self.client.read_flow(flow_id)).name
            return self._flow_names[flow_id]

        async def run(
            self, flow_run: Any, configuration: Any, task_status: anyio.abc.TaskStatus[int] | None = None
        ) -> ProcessWorkerResult:
            name = await self._flow_name(flow_run.flow_id)
            flow = self._flows.get(name)
            if flow is None:
                self._logger.error(
                    f"flow run {flow_run.name}: flow {name!r} is not a planflow remediation "
                    f"flow ({', '.join(self._flows)}); this worker runs only those"
                )
                if task_status is not None:
                    task_status.started(os.getpid())
                return ProcessWorkerResult(status_code=2, identifier=f"{os.getpid()}:refused")
            if task_status is not None:
                task_status.started(os.getpid())
            status = await anyio.to_thread.run_sync(_execute, flow, flow_run, abandon_on_cancel=True)
            return ProcessWorkerResult(status_code=status, identifier=f"{os.getpid()}:{threading.get_ident()}")


def _execute(flow: Any, flow_run: Any) -> int:
    """Run one flow run with Prefect's flow engine in this thread; 0 when it completed."""
    state = run_flow(flow, flow_run=flow_run, parameters=dict(flow_run.parameters or {}), return_type="state")
    return 0 if state is not None and not state.is_crashed() else 1


async def serve(pool: str, name: str | None, limit: int, query_seconds: float) -> None:
    with temporary_settings({PREFECT_WORKER_QUERY_SECONDS: query_seconds, PREFECT_WORKER_PREFETCH_SECONDS: 0}):
        async with RemediationWorker(
            work_pool_name=pool, name=name, limit=limit, create_pool_if_not_found=False
        ) as worker:
            await worker.start()


def serve_on(pool: str, name: str | None, limit: int, query_seconds: float) -> None:
    """`serve`, started again when Prefect's worker stops (worker_restart.py), each
    attempt in an event loop of its own (a failed one can leave a cancellation behind)."""
    label = f"planflow remediation worker {name} on {pool}" if name else f"planflow remediation worker on {pool}"
    keep_running(lambda: anyio.run(serve, pool, name, limit, query_seconds), label)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=REMEDIATION_POOL)
    parser.add_argument("--name", default=None)
    parser.add_argument("--limit", type=int, default=4, help="remediation flow runs at once")
    parser.add_argument("--query-seconds", type=float, default=1.0, help="how often to poll the pool")
    args = parser.parse_args(argv)
    serve_on(args.pool, args.name, args.limit, args.query_seconds)


if __name__ == "__main__":
    main()
