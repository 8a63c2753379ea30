"""`planflow runbook [ALERT]`: what an alert means, what to check and what to do.

Mounted by planflow.cli.app as `planflow runbook`.
"""

from __future__ import annotations

import typer

from planflow.cli.common import fail
from planflow.monitoring import runbook as shipped


def runbook(
    alert: str | None = typer.Argument(
        None, help="An alert's name, e.g. PlanflowPipelineRunFailed (any case); leave out for the whole runbook."
    ),
) -> None:
    """Print what ALERT means and what to do (its runbook section), or the whole runbook."""
    if alert is None:
        typer.echo(shipped.text(), nl=False)
        return
    try:
        typer.echo(shipped.section(alert), nl=False)
    except KeyError as exc:
        fail(exc.args[0], 2)
