"""Errors raised by the planner.

Every message says what failed, shows the offending values and suggests a fix, so that a
pipeline author can correct the pipeline definition without reading planner code.
"""

from __future__ import annotations


class PlanningError(Exception):
    """Base class of every error the planner raises on a bad problem."""


class CycleError(PlanningError):
    """The `after` relation has a cycle, so no order of the tasks exists.

    ``cycle`` holds the task names along the cycle, first name repeated at the end.
    """

    def __init__(self, cycle: list[str]):
        self.cycle = list(cycle)
        path = " -> ".join(self.cycle)
        last, first = self.cycle[-2], self.cycle[-1]
        super().__init__(
            f"dependency cycle: {path} (x -> y means y lists x in its `after`), so no task "
            f"of the cycle can start first. Fix: remove one of these `after` entries, e.g. "
            f"drop {last!r} from the `after` of {first!r}."
        )


class InfeasibleError(PlanningError):
    """The problem has no feasible schedule (or is malformed).

    ``problems`` holds one human-readable line per offending item, all of them found at once.
    """

    def __init__(self, problems: list[str] | str):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        if len(self.problems) == 1:
            msg = self.problems[0]
        else:
            msg = f"{len(self.problems)} problems make the plan infeasible:\n" + "\n".join(
                f"- {p}" for p in self.problems
            )
        super().__init__(msg)
