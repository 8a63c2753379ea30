"""The terminal progress bar of `planflow run` and `planflow demo`: one bar per run,
advanced by the runtime's step events, naming the steps that run now."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from planflow.core.pipeline import Pipeline
from planflow.runtime.runner import add_listener

T = TypeVar("T")


def run_with_progress(call: Callable[[], T], pipeline: Pipeline, console: Console) -> T:
    """`call()` (the flow run of `pipeline`) with a progress bar on `console`."""
    running: set[str] = set()
    ended: set[str] = set()  # by name: a flow retry runs steps again (its bar showed 4/2)
    not_completed: dict[str, str] = {}  # step -> Failed or Skipped: said beside a full bar (it read as done)
    interrupted: list[bool] = []  # set once by Ctrl-C
    with Progress(
        TextColumn("[bold]{task.fields[pipeline]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("{task.description}", markup=False),
        console=console,
        transient=False,
    ) as bar:
        task_id = bar.add_task("", total=len(pipeline.steps), pipeline=escape(pipeline.name))

        def listener(event: str, record: Any) -> None:
            if interrupted:  # the run's last events (its steps crashed) come after: the line stays
                return
            if event == "started":
                running.add(record.step)
                ended.discard(record.step)
            else:
                running.discard(record.step)
                ended.add(record.step)
                if event == "completed":
                    not_completed.pop(record.step, None)
                else:
                    not_completed[record.step] = record.state
                bar.update(task_id, completed=len(ended))
                if event == "completed" and getattr(record, "cached", False):
                    bar.console.print(f"[dim]{escape(f'{record.step}: Cached')}[/]")
                elif event != "completed":
                    bar.console.print(f"[red]{escape(f'{record.step}: {record.state}')}[/]")
            # the bar's last state is what stays on screen (and in a file): say nothing when idle
            bar.update(task_id, description=("running: " + ", ".join(sorted(running))) if running else _outcome())

        def _outcome() -> str:
            by_state: dict[str, list[str]] = {}
            for step, state in sorted(not_completed.items()):
                by_state.setdefault(state.lower(), []).append(step)
            return "; ".join(f"{state}: {', '.join(steps)}" for state, steps in sorted(by_state.items()))

        remove = add_listener(listener)
        try:
            return call()
        except KeyboardInterrupt:  # not the steps "running" when the run stopped: what happened
            interrupted.append(True)
            bar.update(task_id, description="interrupted")
            raise
        finally:
            remove()
