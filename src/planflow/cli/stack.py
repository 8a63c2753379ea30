"""`planflow stack up | down | status`: the Prefect server plus the monitoring services.

Mounted by planflow.cli.app as `planflow stack`.
"""

from __future__ import annotations

import typer

from planflow.cli.common import authorized, fail, say
from planflow.monitoring.thresholds import ThresholdsError
from planflow.ops import server as stack
from planflow.ops import services
from planflow.prefect.health import api_url
from planflow.remediation import automations as auto
from planflow.remediation.scaling import stop_started_workers
from planflow.settings import DEFAULT_PORT, StatePaths

stack_app = typer.Typer(
    help="The whole local stack: Prefect server, Prometheus, Alertmanager, Pushgateway, "
    "the planflow exporter and alert bridge.",
    no_args_is_help=True,
)


@stack_app.command("up")
def up(
    profile: str = typer.Option("production", help="fast (seconds; demo, tests) or production (minutes)."),
    prefect_port: int = typer.Option(DEFAULT_PORT, min=1, max=65535, help="Port of the embedded Prefect server."),
    server: bool = typer.Option(True, help="Start the embedded Prefect server too."),
    db: str | None = typer.Option(
        None,
        help="The embedded server's database: sqlite or postgres (as `planflow server up --db`) "
        "[default: the one the project's server last ran on, else sqlite].",
    ),
    prometheus_port: int = typer.Option(9090, min=1, max=65535),
    pushgateway_port: int = typer.Option(9091, min=1, max=65535),
    alertmanager_port: int = typer.Option(9093, min=1, max=65535),
    bridge_port: int = typer.Option(9095, min=1, max=65535),
    exporter_port: int = typer.Option(9096, min=1, max=65535),
    automations: bool = typer.Option(
        True, help="Apply planflow's automations and start the remediation worker (retry, failover, rescale)."
    ),
) -> None:
    """Start everything that does not run yet (idempotent) and print the URLs."""
    paths = StatePaths.discover()
    try:
        url = api_url()
        if server:
            state = stack.up(paths, port=prefect_port, db=db)
            say(f"prefect       {state.url.removesuffix('/api')}  (UI)")
            url = state.url or url
        if url:  # before any service: without the credentials they started, then met a raw 401
            authorized(url)
        started = services.up(
            paths,
            profile=profile,
            ports={
                "prometheus": prometheus_port,
                "pushgateway": pushgateway_port,
                "alertmanager": alertmanager_port,
                "bridge": bridge_port,
                "exporter": exporter_port,
            },
        )
    except (stack.StackError, services.ServicesError, ThresholdsError) as exc:
        fail(str(exc))
    for name, service in started.items():
        say(f"{name:<13} {service.url}  (pid {service.pid})" + (f"; {service.detail}" if service.detail else ""))
    say(f"profile       {profile}; state in {services.monitoring_dir(paths)}")
    own = services.project_thresholds(paths)
    say(f"thresholds    {own or 'planflow defaults'} (a project's own: {services.PROJECT_THRESHOLDS})")
    kept, where = services.kept_receiver_variables(paths)
    if kept:  # alerts still go where an earlier environment said, though this one does not
        say(f"receivers     kept from an earlier `stack up`: {', '.join(kept)} (in {where}; `stack down` forgets them)")
    if automations:
        _automations_up(paths)


def _automations_up(paths: StatePaths) -> None:
    """Apply the automations (idempotent) and start the remediation worker."""
    try:
        lines = auto.apply()
        pid = auto.worker_up(paths)
    except auto.AutomationsError as exc:
        fail(str(exc))
    changed = [line for line in lines if not line.endswith(("unchanged", "kept", "applied"))]
    applied = sum(1 for line in lines if line.startswith(auto.PREFIX) and not line.endswith("(no longer wanted)"))
    say(f"automations   {applied} applied" + (f"; what changed: {'; '.join(changed)}" if changed else " (unchanged)"))
    say(f"remediation   worker pid {pid} on pool {auto.REMEDIATION_POOL}")


@stack_app.command("down")
def down(server: bool = typer.Option(True, help="Stop the embedded Prefect server too.")) -> None:
    """Stop the remediation worker, every worker a rescale started, the monitoring
    services (and the Prefect server)."""
    paths = StatePaths.discover()
    auto.worker_down(paths)
    # Before the server goes: the guard's ledgers on it name workers started elsewhere too.
    api = api_url()
    stopped = stop_started_workers(paths, ledgers=bool(api) and stack.health_problem(api) is None)
    say(
        f"stopped {len(stopped)} worker(s) a rescale had started: {', '.join(stopped)}"
        if stopped
        else "no worker a rescale started was running"
    )
    services.down(paths)
    if server:
        stack.down(paths)
    say("stack stopped.")


@stack_app.command("status")
def status() -> None:
    """Each service's state and URL; exit code 3 unless all run."""
    paths = StatePaths.discover()
    server = stack.status(paths)
    rows = [("prefect", server.state, server.url or "-", server.pid, server.detail)]
    rows += [(s.name, s.state, s.url, s.pid, s.detail) for s in services.status(paths).values()]
    pid = auto.worker_pid(paths)
    rows.append(
        (
            "remediation",
            "running" if pid else "stopped",
            f"pool {auto.REMEDIATION_POOL}",
            pid,
            "" if pid else "start: planflow stack up (or planflow automations worker up)",
        )
    )
    for name, state, url, pid, detail in rows:
        say(f"{name:<13} {state:<10} {url}  {f'pid {pid}' if pid else ''} {detail}".rstrip())
    if not all(row[1] == "running" for row in rows):
        raise typer.Exit(3)
