"""`planflow grafana ...`: generate, check and publish the dashboards.

Mounted by planflow.cli.app as `planflow grafana`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from planflow.cli.common import fail
from planflow.dashboards import generate, queries
from planflow.dashboards.build import build_all
from planflow.dashboards.publish import GrafanaPublishError, publish

grafana_app = typer.Typer(help="Grafana dashboards: generate, check, publish.", no_args_is_help=True)


@grafana_app.command("generate")
def generate_command(
    out: Path | None = typer.Option(None, "--out", help="the project's grafana/ folder (default: ./grafana)"),
) -> None:
    """Write the dashboards' JSON and Grafana's provisioning files into the project."""
    written = generate.write(out)
    for path in written:
        typer.echo(f"wrote {path}")
    if not written:
        typer.echo(f"{out or generate.default_out()} already current")


@grafana_app.command("check")
def check_command(
    out: Path | None = typer.Option(None, "--out", help="the project's grafana/ folder (default: ./grafana)"),
) -> None:
    """Fail if the project's files are stale, a query does not parse or names an unknown metric."""
    problems = [f"stale: {p}" for p in generate.stale_files(out)]
    known = queries.known_metrics()
    for model in build_all().values():
        problems += queries.check_dashboard(model, known)
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo("dashboards current; every query parses and reads known metrics")


@grafana_app.command("publish")
def publish_command(
    url: str | None = typer.Option(
        None, "--url", envvar="GRAFANA_URL", help="Grafana's address, e.g. http://127.0.0.1:3000"
    ),
    token: str | None = typer.Option(None, "--token", envvar="GRAFANA_TOKEN", help="a Grafana service account token"),
    datasources: bool = typer.Option(
        True, "--datasources/--no-datasources", help="also create or update the datasources"
    ),
    timeout: float = typer.Option(10.0, help="seconds per request"),
) -> None:
    """Upload the datasources (create or update by uid) and dashboards (overwrite)."""
    try:
        report = publish(url, token, datasources=datasources, timeout=timeout)
    except GrafanaPublishError as exc:
        fail(str(exc))
    for line in report.lines():
        typer.echo(line)
