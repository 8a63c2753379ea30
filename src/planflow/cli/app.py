"""The `planflow` command tree: the top-level commands, then every group, in the order
`planflow --help` lists them. Each group lives in its own module of this package."""

from __future__ import annotations

import typer

from planflow.cli import pipelines, serve, server
from planflow.cli.automations import automations_app
from planflow.cli.bench import bench_app
from planflow.cli.blocks import blocks_app, pools_app
from planflow.cli.calendar import calendar
from planflow.cli.dask import dask_app
from planflow.cli.demo import demo_app
from planflow.cli.grafana import grafana_app
from planflow.cli.promote import demote, promote
from planflow.cli.results import results_app
from planflow.cli.runbook import runbook
from planflow.cli.stack import stack_app
from planflow.cli.worker import worker_app
from planflow.cli.workpools import workpools_app

app = typer.Typer(help="Plan, run, watch and heal AI pipelines on Prefect.", no_args_is_help=True)

app.command("env")(server.env)
app.command("pipelines")(pipelines.pipelines)
app.command("plan")(pipelines.plan)
app.command("run")(pipelines.run)
app.command("calendar")(calendar)
app.command("serve")(serve.serve)
app.command("promote")(promote)
app.command("demote")(demote)
app.command("runbook")(runbook)

app.add_typer(server.server_app, name="server")
app.add_typer(blocks_app, name="blocks")
app.add_typer(pools_app, name="pools")
app.add_typer(bench_app, name="bench")
app.add_typer(stack_app, name="stack")
app.add_typer(workpools_app, name="workpools")
app.add_typer(grafana_app, name="grafana")
app.add_typer(automations_app, name="automations")
app.add_typer(worker_app, name="worker")
app.add_typer(demo_app, name="demo")
app.add_typer(dask_app, name="dask")
app.add_typer(results_app, name="results")
