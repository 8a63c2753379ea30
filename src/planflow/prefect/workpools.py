"""planflow's Prefect work pools, created from the base job templates shipped in
`planflow/prefect/job_templates/`, and the checks that say what to run when one is
missing, has no worker, or lacks its image.

    >>> apply_work_pools()                       # idempotent
    ['local-process (process): created', 'docker (docker): created', ...]

| work pool       | type       | template          | ResourcePool block                                 |
|-----------------|------------|-------------------|----------------------------------------------------|
| `local-process` | process    | `process.json`    | `local` (blocks.ensure_defaults)                   |
| `docker`        | docker     | `docker.json`     | `docker`: this machine, backup `local`             |
| `kubernetes`    | kubernetes | `kubernetes.json` | `kubernetes`: an example capacity, backup `docker` |

A project states the same ResourcePool blocks in its `blocks/` folder
(`planflow.prefect.blocks.documents.apply_folder`).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound

from planflow.prefect import health
from planflow.prefect.blocks import ResourcePool, ensure_defaults, local_pool_from_machine
from planflow.prefect.health import api_url
from planflow.prefect.jobvars import load_template
from planflow.prefect.limits import sync_limits


@dataclass(frozen=True)
class PoolDefinition:
    name: str  # the Prefect work pool
    type: str  # its worker type
    worker_package: str | None  # the module a worker of this type needs
    pip_name: str | None
    description: str


POOLS: dict[str, PoolDefinition] = {
    "local-process": PoolDefinition(
        "local-process",
        "process",
        None,
        None,
        "Components as processes on the worker's machine (planflow's `local` pool).",
    ),
    "docker": PoolDefinition(
        "docker",
        "docker",
        "prefect_docker",
        "prefect-docker==0.7.4",
        "Components as Docker containers of the planflow image, with memory, CPU and GPU limits from the plan.",
    ),
    "kubernetes": PoolDefinition(
        "kubernetes",
        "kubernetes",
        "prefect_kubernetes",
        "prefect-kubernetes==0.8.0",
        "Components as Kubernetes Jobs with requests/limits (cpu, memory, nvidia.com/gpu) from the plan.",
    ),
}

# The example capacity of the `kubernetes` ResourcePool: edit the block in the UI (or
# `planflow pools set kubernetes ...`) to your cluster's size.
KUBERNETES_EXAMPLE = {"cpu": 32.0, "gpu": 4, "mem_gib": 128.0, "cost_per_hour": 4.0}


class WorkPoolError(RuntimeError):
    """A work pool cannot be applied or used; the message says what to run."""


def require_server() -> str:
    """The API URL, or WorkPoolError when the server does not answer."""
    try:
        return health.require_server()
    except health.ServerNotAnswering as exc:
        raise WorkPoolError(str(exc)) from exc


def worker_package_missing(pool: PoolDefinition) -> bool:
    return bool(pool.worker_package) and importlib.util.find_spec(pool.worker_package) is None


def require_worker_package(pool: PoolDefinition) -> None:
    if worker_package_missing(pool):
        raise WorkPoolError(
            f"work pool '{pool.name}' is of type '{pool.type}', whose worker needs the "
            f"'{pool.pip_name.split('==')[0]}' package, which is not installed. "
            f"Fix: pip install {pool.pip_name} (or apply only the other pools: "
            f"planflow workpools apply local-process)."
        )


def _select(names: Iterable[str] | None) -> list[PoolDefinition]:
    names = list(names) if names else list(POOLS)
    unknown = [n for n in names if n not in POOLS]
    if unknown:
        raise WorkPoolError(
            f"unknown work pool(s) {unknown}; planflow defines {', '.join(POOLS)}. "
            f"Fix: name one of them (`planflow workpools apply {next(iter(POOLS))}`), or none to apply them all"
        )
    return [POOLS[n] for n in names]


def apply_work_pools(names: Iterable[str] | None = None, resource_pools: bool = True) -> list[str]:
    """Create the work pools (all, or `names`) from their templates, or update a pool
    whose base job template changed; then create the matching ResourcePool blocks
    when missing (never overwriting one a user edited). Returns one line per action.
    """
    selected = _select(names)
    require_server()
    done: list[str] = []
    if not names:  # all of planflow's pools: those whose worker cannot run here are skipped, said
        skipped = [pool for pool in selected if worker_package_missing(pool)]
        selected = [pool for pool in selected if pool not in skipped]
        done += [
            f"{pool.name} ({pool.type}): skipped, its worker needs {pool.pip_name.split('==')[0]}. "
            f"Fix: pip install 'planflow[workers]' (or {pool.pip_name}), then apply again"
            for pool in skipped
        ]
    for pool in selected:  # all problems before any change
        require_worker_package(pool)
    with get_client(sync_client=True) as client:
        for pool in selected:
            template = load_template(pool.type)
            try:
                existing = client.read_work_pool(pool.name)
            except ObjectNotFound:
                client.create_work_pool(
                    WorkPoolCreate(
                        name=pool.name, type=pool.type, base_job_template=template, description=pool.description
                    )
                )
                done.append(f"{pool.name} ({pool.type}): created")
                continue
            if existing.type != pool.type:
                raise WorkPoolError(
                    f"work pool '{pool.name}' exists with type '{existing.type}', planflow needs "
                    f"'{pool.type}'. Fix: prefect work-pool delete {pool.name}, then apply again."
                )
            if existing.base_job_template != template:
                client.update_work_pool(
                    pool.name, WorkPoolUpdate(base_job_template=template, description=pool.description)
                )
                done.append(f"{pool.name} ({pool.type}): base job template updated")
            else:
                done.append(f"{pool.name} ({pool.type}): unchanged")
    if resource_pools:
        done += _ensure_resource_pools([p.name for p in selected])
    return done


def _ensure_resource_pools(pool_names: list[str]) -> list[str]:
    # The `local` pool first: the backups below name it, and the planner only creates it
    # by itself on a server that has no ResourcePool at all.
    ensure_defaults()
    wanted: dict[str, Any] = {}
    if "docker" in pool_names:
        machine = local_pool_from_machine("docker")
        wanted["docker"] = lambda: ResourcePool(
            work_pool="docker",
            cpu=machine.cpu,
            gpu=machine.gpu,
            mem_gib=machine.mem_gib,
            cost_per_hour=0.0,
            backup_pool="local",
        )
    if "kubernetes" in pool_names:
        wanted["kubernetes"] = lambda: ResourcePool(work_pool="kubernetes", backup_pool="docker", **KUBERNETES_EXAMPLE)
    done, created = [], {}
    for name, factory in wanted.items():
        try:
            ResourcePool.load(name)
            done.append(f"ResourcePool '{name}': kept (already exists)")
        except ValueError:
            pool = factory()
            pool.save(name)
            created[name] = pool.capacity()
            done.append(f"ResourcePool '{name}': created")
    # its concurrency limits beside it, as `planflow pools set` makes them (`pools sync --check`
    # named every one missing)
    done += sync_limits(created) if created else []
    return done


# -- checks with the fix in the message -------------------------------------------------
def require_pool(name: str) -> Any:
    """The work pool, or WorkPoolError saying how to create it."""
    require_server()
    with get_client(sync_client=True) as client:
        try:
            return client.read_work_pool(name)
        except ObjectNotFound:
            known = [p.name for p in client.read_work_pools()]
    hint = (
        "planflow workpools apply" + (f" {name}" if name in POOLS else "")
        if name in POOLS
        else f"prefect work-pool create {name} --type <process|docker|kubernetes>"
    )
    raise WorkPoolError(
        f"work pool '{name}' does not exist on {api_url()} (pools there: {', '.join(known) or 'none'}). Fix: {hint}"
    )


PAUSED = "; PAUSED: its flow runs wait"  # in worker_status's message for a paused pool (no name holds it)


def worker_status(pool: str, now: dt.datetime | None = None) -> str:
    """Say whether a worker serves `pool`, judged by its heartbeats; the message
    says how to start one when none is alive.

    Raises WorkPoolError when the pool does not exist or the server does not answer.
    """
    found = require_pool(pool)
    with get_client(sync_client=True) as client:
        workers = client.read_workers_for_work_pool(pool)
    paused = (
        f"{PAUSED} even with a worker (paused by planflow's failover, or by hand). "
        f"Resume it with: prefect work-pool resume {pool}"
        if found.is_paused
        else ""
    )
    now = now or dt.datetime.now(dt.UTC)
    alive, stale = [], []
    for worker in workers:
        interval = worker.heartbeat_interval_seconds or 30
        beat = worker.last_heartbeat_time
        age = (now - beat).total_seconds() if beat else None
        if age is not None and age <= 3 * interval and str(worker.status.value).upper() != "OFFLINE":
            alive.append(f"{worker.name} (last heartbeat {age:.0f} s ago)")
        else:
            stale.append(f"{worker.name} (last heartbeat {'never' if age is None else f'{age:.0f} s ago'})")
    if alive:
        return f"work pool '{pool}': {len(alive)} worker(s) online: {', '.join(alive)}{paused}"
    # planflow's command, not `prefect worker start`: that one, in a shell without the
    # project's PREFECT_API_URL, started a server of its own and failed
    start = f"planflow worker start {pool}"
    seen = f" (offline: {', '.join(stale)})" if stale else ""
    return f"work pool '{pool}' has no worker running{seen}; its flow runs wait. Start one with: {start}{paused}"


def worker_online(pool: str) -> bool:
    return "worker(s) online" in worker_status(pool)


def require_image(image: str) -> None:
    """WorkPoolError saying what to run when the Docker engine or the image is missing."""
    if not shutil.which("docker"):
        raise WorkPoolError(
            "the docker client is not installed. Fix: install Docker Engine "
            "(https://docs.docker.com/engine/install/; in planflow's repository: scripts/install-docker.sh)"
        )
    probe = subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True)
    if probe.returncode == 0:
        return
    if "Cannot connect to the Docker daemon" in probe.stderr or "daemon running" in probe.stderr:
        raise WorkPoolError(
            f"the Docker engine does not answer ({probe.stderr.strip()}). Fix: start it (`systemctl start docker` or "
            "`dockerd &`; in planflow's repository: scripts/install-docker.sh)"
        )
    raise WorkPoolError(
        f"the image '{image}' is not on this machine (`docker image inspect {image}` failed). "
        "Fix: build it from your project's Dockerfile (in planflow's repository: `make image`), "
        "or set the deployment's `image` job variable to an image your registry holds."
    )
