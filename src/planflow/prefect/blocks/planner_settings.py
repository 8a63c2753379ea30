"""PlannerSettings: how the planner solves, editable in the Prefect UI."""

from __future__ import annotations

from typing import ClassVar, Literal

from prefect.blocks.core import Block
from pydantic import Field

from planflow.prefect.blocks.kept_reads import DropsKeptReads


class PlannerSettings(DropsKeptReads, Block):
    """Solver, time limit and estimate learning for planflow's planner."""

    _block_type_name: ClassVar[str] = "planflow Planner Settings"
    _block_type_slug: ClassVar[str] = "planflow-planner-settings"
    _description: ClassVar[str] = "How planflow plans each pipeline run."

    solver: Literal["highs", "cbc"] = Field(
        default="highs", description="MILP solver: HiGHS (default) or CBC (bundled with PuLP)."
    )
    time_limit_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest the solver may search, in seconds; the best plan found by then is used.",
    )
    threads: int = Field(default=1, ge=1, description="Solver threads.")
    mip_gap: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="Relative gap to the lower bound at which planning "
        "stops early. Actual durations of real components differ from their estimates by more "
        "than 5 %, so searching the last 5 % rarely pays for the seconds it costs before every "
        "run; 0 searches to the time limit.",
    )
    history_runs: int = Field(
        default=5,
        ge=1,
        description="Recent runs whose median actual duration replaces a component's declared estimate.",
    )
    memory_quantile: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="Quantile of the peak memory of recent runs that replaces a component's declared "
        "mem_gib once it has history (runtime/memory.py).",
    )
    memory_margin: float = Field(
        default=1.2,
        ge=1,
        le=10,
        description="Factor on the learned peak memory: head room over what recent runs used.",
    )
    oom_memory_factor: float = Field(
        default=2.0,
        gt=1,
        le=16,
        description="A component killed for memory is run again with its memory limit times this factor.",
    )
    oom_max_mem_gib: float = Field(
        default=64.0,
        gt=0,
        description="Cap on the memory limit a component killed for memory is retried with (GiB); "
        "never above the largest pool that may run it.",
    )
    oom_max_retries: int = Field(
        default=3,
        ge=0,
        le=10,
        description="Runs again with more memory after a kill for memory, per component and run.",
    )
