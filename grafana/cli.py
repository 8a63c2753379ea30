"""`planflow grafana ...`: generate, check and publish the dashboards.

Mounted by planflow/cli.py as `app.add_typer(grafana_app, name="grafana")`.
"""

from __future__ import annotations

from typing import Optional

import typer

grafana_app = typer.Typer(help="Grafana dashboards: generate, check, publish.", no_args_is_help=True)


@grafana_app.command("generate")
def generate_command() -> None:
    """Write grafana/dashboards/*.json from grafana/dashboards.py."""
    from grafana import generate

    written = generate.write()
    for path in written:
        typer.echo(f"wrote {path}")
    if not written:
        typer.echo("grafana/dashboards/ already current")


@grafana_app.command("check")
def check_command() -> None:
    """Fail if the committed JSON is stale, a query does not parse or names an unknown metric."""
    from grafana import generate, queries
    from grafana.dashboards import build_all

    problems = [f"stale: {p}" for p in generate.stale_files()]
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
    url: Optional[str] = typer.Option(None, "--url", envvar="GRAFANA_URL",
                                      help="Grafana's address, e.g. http://127.0.0.1:3000"),
    token: Optional[str] = typer.Option(None, "--token", envvar="GRAFANA_TOKEN",
                                        help="a Grafana service account token"),
    datasources: bool = typer.Option(True, "--datasources/--no-datasources",
                                     help="also create or update the datasources"),
    timeout: float = typer.Option(10.0, help="seconds per request"),
) -> None:
    """Upload the datasources (create or update by uid) and dashboards (overwrite)."""
    from grafana.publish import GrafanaPublishError, publish

    try:
        report = publish(url, token, datasources=datasources, timeout=timeout)
    except GrafanaPublishError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    for line in report.lines():
        typer.echo(line)
