"""ResourcePool: the capacities of one Prefect work pool, as the planner sees them."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import ClassVar

import psutil
from prefect.blocks.core import Block
from pydantic import Field

from planflow.prefect.blocks.kept_reads import DropsKeptReads


class ResourcePool(DropsKeptReads, Block):
    """Capacity, cost and backup of one Prefect work pool. The block's document
    name is the pool's planflow name (e.g. `local`); components name it in `pools=`.
    """

    _block_type_name: ClassVar[str] = "planflow Resource Pool"
    _block_type_slug: ClassVar[str] = "planflow-resource-pool"
    _description: ClassVar[str] = (
        "Capacity vector (cpu, gpu, memory), cost and backup pool of a Prefect work pool, "
        "read by the planflow planner before every run."
    )

    work_pool: str = Field(description="Name of the Prefect work pool that runs components planned here.")
    cpu: float = Field(gt=0, description="CPU cores available at once on this pool.")
    gpu: int = Field(default=0, ge=0, description="GPUs available at once on this pool.")
    mem_gib: float = Field(gt=0, description="Memory available at once, in GiB.")
    cost_per_hour: float = Field(
        default=0.0,
        ge=0,
        description="Cost of one hour of this pool (any currency); the planner breaks makespan ties by cost.",
    )
    backup_pool: str | None = Field(
        default=None,
        description="planflow pool to fail over to when this one is unhealthy.",
    )

    def capacity(self) -> dict[str, float]:
        return {"cpu": float(self.cpu), "gpu": float(self.gpu), "mem_gib": float(self.mem_gib)}


def machine_gpus() -> int:
    """The GPUs of this machine (nvidia-smi's list; 0 without it)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _memory_gib() -> float:
    """The machine's physical memory in GiB, to one decimal."""
    return round(psutil.virtual_memory().total / 2**30, 1)


def machine_capacity() -> dict[str, float]:
    """This machine's cores, GPUs and memory (GiB), as a pool's capacity names them."""
    return {"cpu": float(os.cpu_count() or 1), "gpu": float(machine_gpus()), "mem_gib": _memory_gib()}


def local_pool_from_machine(work_pool: str = "local-process") -> ResourcePool:
    """The default `local` pool, sized from the machine it runs on (all of it:
    the planner schedules within these numbers, it does not reserve them)."""
    machine = machine_capacity()
    return ResourcePool(
        work_pool=work_pool,
        cpu=machine["cpu"],
        gpu=int(machine["gpu"]),
        mem_gib=machine["mem_gib"],
        cost_per_hour=0.0,
        backup_pool=None,
    )
