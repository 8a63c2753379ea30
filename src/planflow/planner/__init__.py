"""planflow.planner: multi-mode, multi-pool resource-constrained project scheduling.

Never imports prefect.  See :mod:`planner.engine` for the method and
:mod:`planner.problem` for an example.
"""

from .engine import PlannerOptions, solve
from .errors import CycleError, InfeasibleError, PlanningError
from .plan import Plan, PlannedTask, plan_violations
from .problem import Mode, Pool, Problem, Step, Task, validate_problem

__all__ = [
    "Mode",
    "Task",
    "Pool",
    "Step",
    "Problem",
    "Plan",
    "PlannedTask",
    "PlannerOptions",
    "solve",
    "PlanningError",
    "CycleError",
    "InfeasibleError",
    "plan_violations",
    "validate_problem",
]
