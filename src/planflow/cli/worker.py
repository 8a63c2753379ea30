"""`planflow worker start POOL`: a Prefect worker for one work pool, pointed at the
project's server.

It is `prefect worker start` with what planflow's other commands already know: the
server (the user's PREFECT_API_URL, else the project's embedded one, started when
needed), the pool's type (read from the work pool), and the project folder (the
worker runs there, with the folder on PYTHONPATH, so that flow runs import the
project's modules as `planflow run` does). The command replaces itself with the
worker (exec), so Ctrl-C and signals reach the worker directly.
"""

from __future__ import annotations

import importlib.util
import os
from enum import StrEnum

import typer
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from planflow.cli.common import ensure_server, err, fail
from planflow.ops import server
from planflow.ops.workers import worker_environment
from planflow.prefect.workpools import POOLS
from planflow.settings import project_root

worker_app = typer.Typer(help="Prefect workers for the project's work pools.", no_args_is_help=True)


class WorkerType(StrEnum):
    process = "process"
    docker = "docker"
    kubernetes = "kubernetes"


def _pool_type(pool: str, url: str) -> str | None:
    """The type of the work pool `pool` on `url`; None when there is no such pool."""
    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        try:
            return client.read_work_pool(pool).type
        except ObjectNotFound:
            return None


def _require_worker_package(kind: str, pool: str) -> None:
    needs = next((p for p in POOLS.values() if p.type == kind and p.worker_package), None)
    if needs and importlib.util.find_spec(needs.worker_package) is None:
        fail(
            f"a worker for '{pool}' (type {kind}) needs the '{needs.pip_name.split('==')[0]}' package, "
            f"which is not installed. Fix: pip install {needs.pip_name}  (or: pip install 'planflow[workers]')"
        )


@worker_app.command("start")
def start(
    pool: str = typer.Argument(..., help="The work pool to take flow runs from, e.g. local-process."),
    worker_type: WorkerType | None = typer.Option(
        None,
        "--type",
        help="Worker type. Default: the work pool's own type. With a pool that does not exist yet, "
        "Prefect creates it with this type.",
    ),
    name: str | None = typer.Option(None, help="The worker's name (default: Prefect's)."),
    limit: int | None = typer.Option(None, min=1, help="Flow runs at once (default: no limit)."),
) -> None:
    """Start a Prefect worker for POOL against the project's server, from the project
    folder (it runs until stopped)."""
    url = ensure_server(same_as_env=False)
    actual = _pool_type(pool, url)
    if actual is None and worker_type is None:
        fail(
            f"work pool '{pool}' does not exist on {url}. Fix: `planflow workpools apply` (planflow's "
            f"pools: {', '.join(POOLS)}), or create it with `planflow worker start {pool} --type process`."
        )
    if actual is not None and worker_type is not None and actual != worker_type.value:
        fail(
            f"work pool '{pool}' is of type '{actual}', not '{worker_type.value}'. "
            f"Fix: leave out --type (or give --type {actual})."
        )
    kind = actual or str(worker_type)
    _require_worker_package(kind, pool)

    command = [*server.prefect_command(), "worker", "start", "--pool", pool, "--type", kind]
    if name:
        command += ["--name", name]
    if limit is not None:
        command += ["--limit", str(limit)]
    root = project_root()
    python_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {
        **worker_environment(os.environ),
        "PREFECT_API_URL": url,
        "PYTHONPATH": os.pathsep.join([str(root), *(p for p in python_path if p != str(root))]),
    }
    err.print(f"worker for pool '{pool}' ({kind}) on {url}, in {root}", highlight=False)
    os.chdir(root)
    os.execve(command[0], command, env)
