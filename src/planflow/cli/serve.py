"""`planflow serve PIPELINE`: answer a pipeline's online path over HTTP."""

from __future__ import annotations

import typer

from planflow.cli.common import authorized
from planflow.prefect.health import api_url
from planflow.serving.app import DEFAULT_MAX_BODY_BYTES
from planflow.serving.loader import ServedRuns
from planflow.serving.path import OnlinePathError
from planflow.serving.replicas import ServeError, serve_one, serve_replicas
from planflow.serving.swap import check_poll_seconds


def serve(
    target: str = typer.Argument(..., help="a pipeline's name (its module's `online` path) or an online path YAML"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, min=1, max=65535, help="port of the service (the balancer's with --replicas > 1)"),
    replicas: int = typer.Option(1, min=1, max=16, help="replicas behind HAProxy (ports port+1 ...)"),
    poll_seconds: float = typer.Option(5.0, help="how often to look for a newer Completed run (0.2-300 s)"),
    max_body_bytes: int = typer.Option(DEFAULT_MAX_BODY_BYTES, min=1024, help="largest request body accepted"),
    deployment: str | None = typer.Option(
        None,
        help="serve only the runs of this deployment (NAME or FLOW/NAME), e.g. the scheduled one: "
        "not a run by hand with other parameters",
    ),
    tag: list[str] = typer.Option(
        [],
        "--tag",
        help="serve only the runs with this tag (repeatable: all of them), e.g. runs promoted by "
        "`prefect deployment run ... --tag release` or a deployment's tags",
    ),
) -> None:
    """Serve the online path of TARGET with the outputs of its last Completed run; swap to
    a newer run's outputs when one completes, without dropping a request."""
    if replicas > 1 and port + replicas > 65535:
        typer.echo(
            f"planflow serve: --port {port} with --replicas {replicas}: the replicas take ports {port + 1}-"
            f"{port + replicas}, past 65535. Fix: a lower --port, e.g. --port 8000",
            err=True,
        )
        raise typer.Exit(2)
    served = ServedRuns(deployment, tuple(dict.fromkeys(t.strip() for t in tag)))
    if any(not t for t in served.tags):
        typer.echo("planflow serve: --tag '': a tag must not be empty. Fix: e.g. --tag release", err=True)
        raise typer.Exit(2)
    url = api_url()
    if url:  # a server down is waited for (it serves meanwhile); a refusal of its credentials is not
        authorized(url)
    try:
        check_poll_seconds(poll_seconds)
        if replicas == 1:
            serve_one(target, host, port, poll_seconds, max_body_bytes, served)
        else:
            serve_replicas(target, host, port, replicas, poll_seconds, max_body_bytes, served=served)
    except (OnlinePathError, ServeError, ValueError, LookupError) as exc:
        typer.echo(f"planflow serve: {exc}", err=True)
        raise typer.Exit(getattr(exc, "code", 1)) from None
