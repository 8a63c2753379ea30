"""CalendarEntry: one run's reservations on the pools, where every process can read them.

Each run writes one document of its own (named `run-<flow run id>`) when it is planned,
rewrites it as its components start and end, and deletes it when it ends. One writer per
document, so concurrent runs never overwrite each other's reservations (a shared document
per pool would need a compare-and-swap that block documents do not offer); reading the
calendar is one request for every document of this type. Being block documents, the
entries live in the server's database: they survive a restart of the server and of the
runs' processes, and the Prefect UI lists them.
"""

from __future__ import annotations

from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import Field


class CalendarEntry(Block):
    """What one run holds or has planned on the pools (written by the run itself)."""

    _block_type_name: ClassVar[str] = "planflow Calendar Entry"
    _block_type_slug: ClassVar[str] = "planflow-calendar-entry"
    _description: ClassVar[str] = (
        "One run's planned and running components on the pools (start, finish, resources); "
        "written by the run, deleted when it ends. Read by the planner and `planflow calendar`."
    )

    flow_run_id: str = Field(description="The run's flow run id.")
    flow_run_name: str = Field(default="", description="The run's flow run name.")
    pipeline: str = Field(description="The pipeline the run runs.")
    planned_at: float = Field(description="When the run was planned (Unix time, s): its plan's time 0.")
    eta: float = Field(description="When the run is expected to finish (Unix time, s), kept current.")
    reservations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="One per component: component, pool, start, finish (Unix time, s), demand, state.",
    )


def entry_name(flow_run_id: str) -> str:
    return f"run-{flow_run_id}"
