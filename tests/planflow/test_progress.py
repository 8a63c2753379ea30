"""The terminal's progress bar of `planflow run`: steps counted by name."""

from __future__ import annotations

import io

import toy_dags  # tests/fixtures is on sys.path
from rich.console import Console

from planflow.cli.progress import run_with_progress
from planflow.runtime.dispatch import StepRecord
from planflow.runtime.events import StepEvent, subscribers


def test_a_flow_retry_counts_each_step_once():
    """A flow-level retry runs the steps again: the bar showed 4/2 after one; now the
    steps that ended, by name, over the pipeline's steps."""
    pipeline = toy_dags.diamond
    out = io.StringIO()

    def two_attempts() -> str:
        for attempt in ("Failed", "Completed"):
            for step in pipeline.steps:
                ended = "completed" if attempt == "Completed" else "failed"
                for kind, state in (("started", "Running"), (ended, attempt)):
                    record = StepRecord(step, "local", state=state)
                    for reporter in subscribers():
                        reporter.on_step(StepEvent(kind, record, None))  # type: ignore[arg-type]
        return "done"

    assert run_with_progress(two_attempts, pipeline, Console(file=out, width=120, force_terminal=False)) == "done"
    total = len(pipeline.steps)
    assert f"{total}/{total}" in out.getvalue() and f"{2 * total}/{total}" not in out.getvalue(), out.getvalue()


def test_a_failed_run_says_so_beside_its_full_bar():
    """Every step ended, one Failed and the rest Skipped: the bar read 4/4 and nothing else,
    as a run that completed. It now names them."""
    pipeline = toy_dags.diamond
    out = io.StringIO()
    steps = list(pipeline.steps)

    def failing() -> str:
        for index, step in enumerate(steps):
            kind, state = ("failed", "Failed") if index == 0 else ("skipped", "Skipped")
            for reporter in subscribers():
                if index == 0:
                    reporter.on_step(StepEvent("started", StepRecord(step, "local", state="Running"), None))  # type: ignore[arg-type]
                reporter.on_step(StepEvent(kind, StepRecord(step, "local", state=state), None))  # type: ignore[arg-type]
        return "done"

    run_with_progress(failing, pipeline, Console(file=out, width=200, force_terminal=False))
    shown = out.getvalue().splitlines()[-1]
    total = len(steps)
    assert f"{total}/{total}" in shown and f"failed: {steps[0]}; skipped: {', '.join(sorted(steps[1:]))}" in shown, (
        shown
    )
