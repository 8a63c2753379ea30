"""A pipeline's flow starts its server watchdog with its Running state (flow.py): a hook of
planflow's own, whose routine log lines stay off the terminal, and whose errors do not."""

from __future__ import annotations

import logging

from planflow import to_flow
from planflow.core.component import component
from planflow.core.pipeline import Pipeline


@component(cpu=1, mem_gib=0.1, est_seconds=0.1)
def one() -> int:
    return 1


def test_the_running_hook_starts_the_watchdog_and_only_its_info_lines_are_dropped():
    flow = to_flow(Pipeline("hooked", [one]))
    assert [h.__name__ for h in flow.on_running_hooks] == ["_start_watchdog"]
    assert "_stop_watchdog" in [h.__name__ for h in flow.on_completion_hooks]
    engine = logging.getLogger("prefect.engine")

    def passes(level: int, message: str) -> bool:
        return bool(engine.filter(engine.makeRecord(engine.name, level, __file__, 1, message, (), None)))

    assert not passes(logging.INFO, "Running hook '_start_watchdog' in response to entering state 'Running'")
    assert not passes(logging.INFO, "Hook '_start_watchdog' finished running successfully")
    assert passes(logging.ERROR, "An error was encountered while running hook '_start_watchdog'")
    assert passes(logging.INFO, "Running hook 'my_hook' in response to entering state 'Running'")
    to_flow(Pipeline("hooked-again", [one]))
    assert sum(type(f).__name__ == "_QuietWatchdogHook" for f in engine.filters) == 1  # installed once
