"""The `planflow` command line: the top-level commands, and every group mounted.

Run through `planflow.cli.main()` (the console script), which points Prefect at the
project's server before this module imports Prefect.
"""

from __future__ import annotations

import json
import os
from datetime import UTC
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from planflow.cli.grafana import grafana_app
from planflow.cli.stack import stack_app
from planflow.cli.worker import worker_app
from planflow.ops import server as stack
from planflow.prefect.workpools import workpools_app
from planflow.remediation.automations import automations_app
from planflow.runtime.flow import to_flow
from planflow.settings import DEFAULT_HOST, DEFAULT_PORT, StatePaths, client_env, user_api_url

app = typer.Typer(help="Plan, run, watch and heal AI pipelines on Prefect.", no_args_is_help=True)
server_app = typer.Typer(help="The embedded Prefect server (SQLite, project-local).", no_args_is_help=True)
blocks_app = typer.Typer(help="planflow's Prefect blocks.", no_args_is_help=True)
pools_app = typer.Typer(help="Resource pools (ResourcePool blocks).", no_args_is_help=True)
bench_app = typer.Typer(help="Planner benchmarks on standard instances.", no_args_is_help=True)
app.add_typer(server_app, name="server")
app.add_typer(blocks_app, name="blocks")
app.add_typer(pools_app, name="pools")
app.add_typer(bench_app, name="bench")
app.add_typer(stack_app, name="stack")
app.add_typer(workpools_app, name="workpools")
app.add_typer(grafana_app, name="grafana")
app.add_typer(automations_app, name="automations")
app.add_typer(worker_app, name="worker")
console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


# -- server ---------------------------------------------------------------------------
@server_app.command("up")
def server_up(
    host: str = typer.Option(DEFAULT_HOST, help="Address to listen on."),
    port: int = typer.Option(DEFAULT_PORT, help="Port to listen on."),
) -> None:
    """Start the embedded Prefect server (reused when already running)."""
    before = stack.status()
    try:
        state = stack.up(host=host, port=port)
    except stack.StackError as exc:
        fail(str(exc))
    verb = "already running" if before.running else "started"
    console.print(f"Prefect server {verb}: {state.url} (pid {state.pid})")
    console.print(f"UI: {state.url.removesuffix('/api')}")


@server_app.command("down")
def server_down() -> None:
    """Stop the embedded Prefect server."""
    before = stack.status()
    stack.down()
    console.print("Prefect server stopped." if before.pid else "Prefect server was not running.")


@server_app.command("status")
def server_status() -> None:
    """Say whether the embedded server runs, where, and its health."""
    state = stack.status()
    paths = StatePaths.discover()
    console.print(f"state: {state.state}")
    if state.url:
        console.print(f"url:   {state.url}")
    if state.pid:
        console.print(f"pid:   {state.pid}")
    if state.detail:
        console.print(f"note:  {state.detail}")
    console.print(f"home:  {paths.home}")
    console.print(f"log:   {paths.log_file}")
    if not state.running:
        raise typer.Exit(3)


@app.command("env")
def env() -> None:
    """Print the exports that point `prefect` commands at the embedded server:
    `eval "$(planflow env)"`."""
    for key, value in client_env().items():
        console.print(f"export {key}={value}", highlight=False, soft_wrap=True)


def _ensure_server() -> str:
    """The API URL to use: the user's PREFECT_API_URL if set (it must answer), else
    this project's embedded server, started when needed."""
    chosen = user_api_url()
    if chosen:
        if not stack.healthy(chosen):
            fail(
                f"the Prefect server at {chosen} (PREFECT_API_URL) does not answer. Fix: "
                "start it, or unset PREFECT_API_URL to use the embedded server (`planflow server up`)."
            )
        return chosen
    current = stack.status()
    if current.running and current.url:
        return current.url
    err.print("Starting the embedded Prefect server (planflow server up) ...")
    try:
        state = stack.up()
    except stack.StackError as exc:
        fail(str(exc))
    if state.url != os.environ["PREFECT_API_URL"]:
        fail(
            f"the embedded server runs at {state.url}, but this command was set up for "
            f"{os.environ['PREFECT_API_URL']}. Fix: run the command again."
        )
    return state.url


# -- blocks and pools ---------------------------------------------------------------------
@blocks_app.command("register")
def blocks_register() -> None:
    """Register planflow's block types; create the `local` pool and default settings."""
    _ensure_server()
    from planflow.prefect.blocks import ensure_defaults

    created = ensure_defaults()
    for name, new in created.items():
        console.print(f"{name}: {'created' if new else 'kept (already exists)'}")


@pools_app.command("ls")
def pools_ls() -> None:
    """List the resource pools the planner plans over."""
    _ensure_server()
    from planflow.prefect.blocks import load_pools

    table = Table("pool", "work pool", "cpu", "gpu", "mem GiB", "cost/h", "backup")
    for name, pool in sorted(load_pools().items()):
        table.add_row(
            name,
            pool.work_pool,
            f"{pool.cpu:g}",
            str(pool.gpu),
            f"{pool.mem_gib:g}",
            f"{pool.cost_per_hour:g}",
            pool.backup_pool or "-",
        )
    console.print(table)


@pools_app.command("set")
def pools_set(
    name: str = typer.Argument(..., help="planflow pool name, e.g. gpu"),
    work_pool: str | None = typer.Option(None, help="Prefect work pool (default: NAME)."),
    cpu: float = typer.Option(..., help="CPU cores."),
    mem_gib: float = typer.Option(..., help="Memory, GiB."),
    gpu: int = typer.Option(0, help="GPUs."),
    cost_per_hour: float = typer.Option(0.0, help="Cost of one hour."),
    backup_pool: str | None = typer.Option(None, help="Pool to fail over to."),
) -> None:
    """Create or update a ResourcePool block."""
    _ensure_server()
    from pydantic import ValidationError

    from planflow.prefect.blocks import ResourcePool, register

    register()
    try:
        pool = ResourcePool(
            work_pool=work_pool or name,
            cpu=cpu,
            gpu=gpu,
            mem_gib=mem_gib,
            cost_per_hour=cost_per_hour,
            backup_pool=backup_pool,
        )
    except ValidationError as exc:
        fail(f"pool '{name}': {exc}")
    pool.save(name, overwrite=True)
    console.print(f"pool {name}: cpu={cpu:g} gpu={gpu} mem_gib={mem_gib:g} -> work pool {pool.work_pool}")


# -- pipelines --------------------------------------------------------------------------
@app.command("pipelines")
def pipelines(name: str | None = typer.Argument(None, help="Show one pipeline in detail.")) -> None:
    """List the pipelines (or describe one): components, parameters, demand and time."""
    from planflow.core import discovery as registry

    if name:
        try:
            _describe(registry.get(name))
        except (LookupError, ValueError) as exc:
            fail(str(exc))
        return
    table = Table("pipeline", "components", "critical path s", "sum est s", "cpu·s", "parameters", "source")
    broken = []
    for item in registry.discover():
        if item.pipeline is None:
            broken.append(item)
            continue
        t = item.pipeline.totals()
        params = ", ".join(f"{k}={v}" for k, v in item.pipeline.params.items())
        table.add_row(
            item.name,
            str(t["components"]),
            f"{t['critical_path_seconds']:.1f}",
            f"{t['total_seconds']:.1f}",
            f"{t['cpu_seconds']:.1f}",
            params,
            item.source,
        )
    console.print(table)
    for item in broken:
        err.print(f"[red]{item.source} failed to load:[/] {item.error}", highlight=False)
    if broken:
        raise typer.Exit(1)


def _describe(pipeline: Any) -> None:
    console.print(f"[bold]{pipeline.name}[/]: {pipeline.description}")
    table = Table("step", "after", "cpu", "gpu", "mem GiB", "est s", "pools")
    for name in pipeline.topological_order():
        spec = pipeline.steps[name].spec
        table.add_row(
            name,
            ", ".join(pipeline.upstream(name)) or "-",
            f"{spec.cpu:g}",
            str(spec.gpu),
            f"{spec.mem_gib:g}",
            f"{spec.est_seconds:g}",
            ", ".join(spec.pools) or "any",
        )
    console.print(table)
    totals = Table("total", "value")
    for key, value in pipeline.totals().items():
        totals.add_row(key, f"{value:g}")
    console.print(totals)
    console.print("parameters: " + (", ".join(f"{k}={v!r}" for k, v in pipeline.params.items()) or "-"))


@app.command("plan")
def plan(
    name: str = typer.Argument(..., help="Pipeline name (see `planflow pipelines`)."),
    json_output: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    gantt: str | None = typer.Option(None, help="Also write the Gantt chart to this PNG file."),
    mode: str = typer.Option(
        "inprocess", help="inprocess: plan on the `local` pool only; distributed: over every pool."
    ),
) -> None:
    """Plan a pipeline over the resource pools without running it."""
    _ensure_server()
    from planflow.core import discovery as registry
    from planflow.planner import PlanningError
    from planflow.runtime import reporting
    from planflow.runtime.runner import make_plan

    try:
        pipeline = registry.get(name)
        pp = make_plan(pipeline, mode=mode)
    except (LookupError, ValueError, PlanningError) as exc:
        fail(str(exc))
    totals = pipeline.totals()
    if gantt:
        from pathlib import Path

        Path(gantt).write_bytes(reporting.gantt_png(pp, title=f"{name}: plan"))
    if json_output:
        print(
            json.dumps(
                {
                    "pipeline": name,
                    "plan": pp.plan.to_dict(),
                    "figures": reporting.plan_figures(pp),
                    "components": reporting.plan_rows(pp),
                    "totals": totals,
                },
                indent=2,
                default=str,
            )
        )
        return
    table = Table(
        "component", "pool", "start s", "finish s", "cpu", "gpu", "mem GiB", "estimate from", title=f"plan: {name}"
    )
    for row in reporting.plan_rows(pp):
        table.add_row(
            row["component"],
            row["pool"],
            f"{row['start_s']:.2f}",
            f"{row['finish_s']:.2f}",
            f"{row['cpu']:g}",
            f"{row['gpu']:g}",
            f"{row['mem_gib']:g}",
            row["estimate"],
        )
    console.print(table)
    f = reporting.plan_figures(pp)
    console.print(
        f"makespan {f['makespan_s']:.2f} s · lower bound {f['lower_bound_s']:.2f} s · gap {f['gap']:.1%} · "
        f"{f['status']} ({f['solver']}, {f['solve_seconds']:.3f} s) · list scheduling {f['heuristic_makespan_s']:.2f} s"
    )
    console.print(
        f"demand: {totals['cpu_seconds']:.1f} core·s, {totals['gpu_seconds']:.1f} GPU·s, "
        f"{totals['mem_gib_seconds']:.1f} GiB·s · sum of estimates {totals['total_seconds']:.1f} s · "
        f"critical path {totals['critical_path_seconds']:.1f} s"
    )


@bench_app.command("psplib")
def bench_psplib(
    paths: list[str] = typer.Argument(..., help="PSPLIB .sm / .mm files, or folders holding them."),
    time_limit: float = typer.Option(10.0, "--time-limit", help="Seconds per instance."),
    solver: str = typer.Option("highs", help="highs or cbc."),
    csv: str | None = typer.Option(None, "--csv", help="Write one row per instance to this CSV."),
) -> None:
    """Plan PSPLIB instances (j30 single-mode, mm-j10 multi-mode) and report each
    makespan, lower bound, status and solve time, against the known optimum when one
    is beside the files (j30opt.sm, mm-j10-reference.csv)."""
    from pathlib import Path

    from planflow.planner import PlanningError
    from planflow.planner.psplib import run_instances, write_csv

    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".sm", ".mm"))
        elif path.is_file():
            files.append(path)
        else:
            fail(f"{raw}: no such file or folder. Fix: give .sm/.mm files or a folder of them")
    if not files:
        fail(f"no .sm or .mm files in {', '.join(paths)}")
    try:
        rows = run_instances(files, time_limit_s=time_limit, solver=solver)
    except (PlanningError, ValueError) as exc:
        fail(str(exc))
    table = Table("instance", "makespan", "lower bound", "status", "solve s", "optimum", "dev %")
    for row in rows:
        table.add_row(
            row["instance"],
            f"{row['makespan']:g}",
            f"{row['lower_bound']:g}",
            row["status"],
            f"{row['solve_seconds']:.2f}",
            "-" if row["optimum"] is None else f"{row['optimum']:g}",
            "-" if row["deviation_pct"] is None else f"{row['deviation_pct']:.2f}",
        )
    console.print(table)
    known = [r for r in rows if r["optimum"] is not None]
    if known:
        hits = sum(1 for r in known if r["deviation_pct"] == 0)
        console.print(
            f"optimum found on {hits}/{len(known)}; mean solve "
            f"{sum(r['solve_seconds'] for r in rows) / len(rows):.2f} s"
        )
    if csv:
        write_csv(rows, csv)
        console.print(f"wrote {csv}")


def _parse_params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--param {pair!r} is not KEY=VALUE. Fix: e.g. --param seed=3")
        params[key.strip()] = value
    return params


def run_one(name: str, params: dict[str, Any], show_progress: bool = True, mode: str = "inprocess") -> dict[str, Any]:
    """Run one pipeline as a Prefect flow run, with a terminal progress display."""
    from planflow.core import discovery as registry
    from planflow.runtime.runner import add_listener

    pipeline = registry.get(name)
    resolved = pipeline.resolve_params(params)  # bad parameters fail before a flow run exists
    flow = to_flow(pipeline)
    if not show_progress:
        return flow(**resolved, mode=mode)

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    running: set[str] = set()
    with Progress(
        TextColumn("[bold]{task.fields[pipeline]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=False,
    ) as bar:
        task_id = bar.add_task("", total=len(pipeline.steps), pipeline=name)

        def listener(event: str, record: Any) -> None:
            if event == "started":
                running.add(record.step)
            else:
                running.discard(record.step)
                bar.advance(task_id)
                if event != "completed":
                    bar.console.print(f"[red]{record.step}: {record.state}[/]")
            bar.update(task_id, description="running: " + (", ".join(sorted(running)) or "-"))

        remove = add_listener(listener)
        try:
            return flow(**resolved, mode=mode)
        finally:
            remove()


def _print_summary(result: dict[str, Any]) -> None:
    table = Table("component", "state", "pool", "seconds", "key metric", title=result["pipeline"])
    for name, step in result["steps"].items():
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in step["metrics"].items())
        seconds = "-" if step["seconds"] is None else f"{step['seconds']:.2f}"
        table.add_row(name, step["state"], step["pool"], seconds, metrics)
    console.print(table)


@app.command("run")
def run(
    name: str = typer.Argument(..., help="Pipeline name (see `planflow pipelines`)."),
    param: list[str] = typer.Option([], "--param", "-p", help="Parameter override KEY=VALUE."),
    json_output: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
    mode: str = typer.Option(
        "inprocess",
        help="inprocess: components are tasks of one flow run; "
        "distributed: each runs as a flow run on its planned work pool.",
    ),
) -> None:
    """Run a pipeline as a Prefect flow on the configured server."""
    url = _ensure_server()
    if mode not in ("inprocess", "distributed"):
        fail(f"--mode {mode!r}: must be 'inprocess' or 'distributed'")
    try:
        result = run_one(name, _parse_params(param), show_progress=not json_output, mode=mode)
    except (LookupError, ValueError) as exc:
        fail(str(exc))
    except Exception as exc:  # the flow run failed; Prefect has logged the traceback
        fail(f"pipeline '{name}' failed: {exc}\nSee the run in the UI: {url.removesuffix('/api')}/runs")
    if json_output:
        print(json.dumps(result, indent=2, default=str))
        return
    _print_summary(result)
    console.print(f"flow run: {url.removesuffix('/api')}/runs/flow-run/{result['flow_run_id']}")


demo_app = typer.Typer(
    help="Demos on the embedded stack: the example pipelines (no sub-command), `heal` (failover and rescale)."
)
app.add_typer(demo_app, name="demo")


@demo_app.callback(invoke_without_command=True)
def demo(
    ctx: typer.Context,
    param: list[str] = typer.Option([], "--param", "-p", help="Override for every pipeline KEY=VALUE."),
    monitoring: bool = typer.Option(
        True, help="Also start the monitoring stack (fast profile) and show a failing run turning into an alert event."
    ),
) -> None:
    """Start the embedded server, register blocks, run every example pipeline; then
    show the monitoring loop: a run that fails on purpose becomes a Prefect event."""
    if ctx.invoked_subcommand is not None:
        return
    from planflow.core import discovery as registry
    from planflow.ops import services
    from planflow.prefect.blocks import ensure_defaults

    url = _ensure_server()
    ensure_defaults()
    ui = url.removesuffix("/api")
    if monitoring:
        try:
            started = services.up(profile="fast")
        except services.ServicesError as exc:
            err.print(f"[yellow]monitoring skipped:[/] {exc}", highlight=False)
            monitoring = False
        else:
            console.print("monitoring: " + ", ".join(f"{n} {s.url}" for n, s in started.items()))
    examples = [f for f in registry.discover() if f.source.startswith("flows.")]
    outcomes = []
    for item in examples:
        if item.pipeline is None:
            fail(f"{item.source} failed to load: {item.error}")
        overrides = {k: v for k, v in _parse_params(param).items() if k in item.pipeline.params}
        console.rule(item.name)
        try:
            result = run_one(item.name, overrides)
        except Exception as exc:
            fail(f"pipeline '{item.name}' failed: {exc}\nSee {ui}/runs")
        _print_summary(result)
        outcomes.append((item.name, result["flow_run_id"]))
    if monitoring:
        _demo_alert_loop(url)
    console.rule("done")
    console.print(f"Prefect UI: {ui}")
    for name, run_id in outcomes:
        console.print(f"  {name}: Completed  {ui}/runs/flow-run/{run_id}")
    if monitoring:
        console.print(
            f"  alert events: {ui}/events  ·  Prometheus alerts: {services.status()['prometheus'].url}/alerts"
        )
    console.print(
        "Next: `planflow demo heal` (make demo-heal) shows a failover and a rescale. "
        "Stop everything with `planflow stack down` (or `make stop`)."
    )


@demo_app.command("heal")
def demo_heal(
    scenario: str = typer.Option("all", help="failover, rescale or all."),
    timeout: float = typer.Option(300.0, help="Seconds to wait for each step before giving up."),
) -> None:
    """Self-healing on the embedded stack: a pool loses its worker and planflow fails its
    run over to the backup pool, then resumes it; a pool gets a backlog and planflow
    scales it out and back. Every step goes through Prometheus, Alertmanager, the bridge,
    a Prefect automation and a remediation flow."""
    from planflow.ops import services
    from planflow.prefect.blocks import ensure_defaults
    from planflow.remediation import automations
    from planflow.remediation import scenarios as heal
    from planflow.settings import StatePaths

    if scenario not in ("failover", "rescale", "all"):
        fail(f"unknown scenario {scenario!r}: failover, rescale or all")
    url = _ensure_server()
    ui = url.removesuffix("/api")
    ensure_defaults()
    paths = StatePaths.discover()
    try:
        started = services.up(paths, profile="fast")
    except services.ServicesError as exc:
        fail(f"the monitoring stack is needed: {exc}")
    console.print("monitoring: " + ", ".join(f"{n} {s.url}" for n, s in started.items()))
    try:
        applied = automations.apply()
    except automations.AutomationsError as exc:
        fail(str(exc))
    console.print(
        f"automations: {sum(1 for line in applied if line.startswith(automations.PREFIX))} applied; "
        f"remediation worker pid {automations.worker_up(paths)}"
    )
    logs = paths.home / "demo-heal"
    results = []
    for name, run in (("failover", heal.failover_scenario), ("rescale", heal.rescale_scenario)):
        if scenario not in (name, "all"):
            continue
        console.rule(f"heal: {name}")
        try:
            results.append(run(logs, say=lambda line: console.print(line, highlight=False), timeout=timeout))
        except heal.HealError as exc:
            fail(f"{name}: {exc}")
    console.rule("done")
    for result in results:
        last = result["timeline"][-1][1] if result["timeline"] else 0
        console.print(f"  {result['scenario']}: healed in {last:.0f} s on {result['work_pool']}")
    console.print(
        f"Remediation runs, their artifacts and events: {ui}/runs?tags=planflow-remediation  ·  "
        f"{ui}/events  ·  worker logs in {logs}"
    )


def _demo_alert_loop(url: str, pipeline: str = "demo-failure", timeout: float = 90.0) -> None:
    """Run a pipeline that fails on purpose and wait for its alert's Prefect event."""
    from datetime import datetime

    from planflow.monitoring.events import wait_for_event
    from planflow.monitoring.prefect_api import auth_headers

    console.rule(f"monitoring loop: {pipeline} fails on purpose")
    since = datetime.now(UTC)
    try:
        run_one(pipeline, {}, show_progress=False)
    except Exception as exc:
        console.print(f"{pipeline} failed as intended: {exc}".splitlines()[0])
    console.print(f"waiting for the alert's Prefect event (up to {timeout:.0f} s) ...")
    event = wait_for_event(
        url, f"planflow.pipeline.{pipeline}", "planflow.alert.firing", since, timeout, headers=auth_headers()
    )
    if event is None:
        fail(
            f"no planflow.alert.firing event for {pipeline} within {timeout:.0f} s; "
            "check `planflow stack status` and Prometheus's /alerts page"
        )
    payload = event.get("payload", {})
    console.print(f"[green]event[/] {event['event']} at {event['occurred']}")
    console.print(f"  resource: {event['resource'].get('prefect.resource.id')}")
    console.print(
        f"  alert:    {payload.get('labels', {}).get('alertname')} ({payload.get('labels', {}).get('severity')})"
    )
    console.print(f"  summary:  {payload.get('annotations', {}).get('summary')}")
