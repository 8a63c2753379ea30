"""A child flow run on the process pool killed for memory, for real: no container
enforces its limit, so planflow's watchdog in the child does (runtime/memory_watch.py).
Past its planned mem_limit it writes down why and kills its own process (SIGKILL, as
the kernel's OOM killer would); the parent tells that kill apart from any other crash
by the record, runs the component again with a larger limit, and it completes."""

from __future__ import annotations

import time
import uuid

import pytest

from planflow import to_flow
from planflow.prefect.reserved import OOM_KILLED_TAG
from planflow.remediation.oom import forget_history
from planflow.remediation.oom_demo import hungry_here, process_pipeline
from planflow.runtime.memory_watch import oom_from_watchdog

from tests.deployments.test_distributed import (  # noqa: F401 (a fixture)
    _children,
    component_deployments,
    worker,
)

pytestmark = pytest.mark.usefixtures("registered_blocks")
EXTRA_MIB = 400  # above its declared 0.25 GiB, below the 0.5 it gets after the kill


def test_a_process_pool_child_past_its_limit_is_told_apart_and_runs_again_with_more(component_deployments):  # noqa: F811
    forget_history(hungry_here)  # planned from its declaration (0.25 GiB), whatever ran before
    started = time.time()
    with worker("local-process", "process"):
        result = to_flow(process_pipeline)(extra_mib=EXTRA_MIB, mode="distributed")
    step = result["steps"]["hungry_here"]
    assert step["state"] == "Completed" and step["oom_kills"] == 1 and step["mem_limit_gib"] == 0.5, step
    assert step["peak_mem_gib"] > EXTRA_MIB / 1024  # the second child's peak RSS (the whole flow-run process)
    runs = sorted(
        (c for c in _children(process_pipeline.name, ["hungry_here"]) if c.created.timestamp() >= started - 1),
        key=lambda c: c.created,
    )
    killed, completed = runs
    assert killed.state.type.value == "CRASHED" and completed.state.is_completed()
    # tagged by its parent: the exporter counts it killed for memory, not a crash of the pool
    assert OOM_KILLED_TAG in killed.tags and OOM_KILLED_TAG not in completed.tags
    kill = oom_from_watchdog(str(killed.id))  # what the parent read to tell it apart
    assert kill is not None and kill.limit_gib == 0.25 and kill.exit_code == -9
    assert "planflow's memory watchdog: the component's peak RSS" in kill.where and "> mem_limit 0.25 GiB" in kill.where
    # what the history learns is the run that completed, not the killed one and its restart
    from planflow.runtime import history

    [learned] = history.observations(hungry_here, 1)
    assert learned.seconds >= (completed.end_time - completed.start_time).total_seconds() - 0.5, learned
    assert learned.seconds < step["seconds"] - 1.0, (learned, step["seconds"])


def test_a_crash_without_the_watchdogs_record_is_not_taken_for_an_oom_kill(registered_blocks):
    assert oom_from_watchdog(str(uuid.uuid4())) is None  # e.g. a plain SIGKILL: it stays a crash
