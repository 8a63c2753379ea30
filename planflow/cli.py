"""The `planflow` command line."""

from __future__ import annotations

# Prefect reads its settings when it is first imported: point it at the
# embedded server (unless the user exported PREFECT_API_URL) before anything
# imports it.
from planflow.config import apply_client_env

apply_client_env()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any, List, Optional  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from planflow import stack  # noqa: E402
from planflow.config import DEFAULT_HOST, DEFAULT_PORT, StatePaths, client_env  # noqa: E402

app = typer.Typer(help="Plan, run, watch and heal AI pipelines on Prefect.", no_args_is_help=True)
server_app = typer.Typer(help="The embedded Prefect server (SQLite, project-local).", no_args_is_help=True)
blocks_app = typer.Typer(help="planflow's Prefect blocks.", no_args_is_help=True)
pools_app = typer.Typer(help="Resource pools (ResourcePool blocks).", no_args_is_help=True)
app.add_typer(server_app, name="server")
app.add_typer(blocks_app, name="blocks")
app.add_typer(pools_app, name="pools")
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
    the embedded server, started when needed."""
    url = os.environ["PREFECT_API_URL"]
    if stack.healthy(url):
        return url
    embedded = StatePaths.discover().recorded_url() or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/api"
    if url != embedded:
        fail(
            f"the Prefect server at {url} (PREFECT_API_URL) does not answer. Fix: start it, "
            "or unset PREFECT_API_URL to use the embedded server (`planflow server up`)."
        )
    err.print("Starting the embedded Prefect server (planflow server up) ...")
    try:
        return stack.up().url or url
    except stack.StackError as exc:
        fail(str(exc))
    return url


# -- blocks and pools ---------------------------------------------------------------------
@blocks_app.command("register")
def blocks_register() -> None:
    """Register planflow's block types; create the `local` pool and default settings."""
    _ensure_server()
    from blocks import ensure_defaults

    created = ensure_defaults()
    for name, new in created.items():
        console.print(f"{name}: {'created' if new else 'kept (already exists)'}")


@pools_app.command("ls")
def pools_ls() -> None:
    """List the resource pools the planner plans over."""
    _ensure_server()
    from blocks import load_pools

    table = Table("pool", "work pool", "cpu", "gpu", "mem GiB", "cost/h", "backup")
    for name, pool in sorted(load_pools().items()):
        table.add_row(name, pool.work_pool, f"{pool.cpu:g}", str(pool.gpu), f"{pool.mem_gib:g}",
                      f"{pool.cost_per_hour:g}", pool.backup_pool or "-")
    console.print(table)


@pools_app.command("set")
def pools_set(
    name: str = typer.Argument(..., help="planflow pool name, e.g. gpu"),
    work_pool: Optional[str] = typer.Option(None, help="Prefect work pool (default: NAME)."),
    cpu: float = typer.Option(..., help="CPU cores."),
    mem_gib: float = typer.Option(..., help="Memory, GiB."),
    gpu: int = typer.Option(0, help="GPUs."),
    cost_per_hour: float = typer.Option(0.0, help="Cost of one hour."),
    backup_pool: Optional[str] = typer.Option(None, help="Pool to fail over to."),
) -> None:
    """Create or update a ResourcePool block."""
    _ensure_server()
    from pydantic import ValidationError

    from blocks import ResourcePool, register

    register()
    try:
        pool = ResourcePool(work_pool=work_pool or name, cpu=cpu, gpu=gpu, mem_gib=mem_gib,
                            cost_per_hour=cost_per_hour, backup_pool=backup_pool)
    except ValidationError as exc:
        fail(f"pool '{name}': {exc}")
    pool.save(name, overwrite=True)
    console.print(f"pool {name}: cpu={cpu:g} gpu={gpu} mem_gib={mem_gib:g} -> work pool {pool.work_pool}")


# -- pipelines --------------------------------------------------------------------------
@app.command("pipelines")
def pipelines(name: Optional[str] = typer.Argument(None, help="Show one pipeline in detail.")) -> None:
    """List the pipelines (or describe one): components, parameters, demand and time."""
    from flows import registry

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
        table.add_row(item.name, str(t["components"]), f"{t['critical_path_seconds']:.1f}",
                      f"{t['total_seconds']:.1f}", f"{t['cpu_seconds']:.1f}", params, item.source)
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
        table.add_row(name, ", ".join(pipeline.upstream(name)) or "-", f"{spec.cpu:g}", str(spec.gpu),
                      f"{spec.mem_gib:g}", f"{spec.est_seconds:g}", ", ".join(spec.pools) or "any")
    console.print(table)
    totals = Table("total", "value")
    for key, value in pipeline.totals().items():
        totals.add_row(key, f"{value:g}")
    console.print(totals)
    console.print("parameters: " + (", ".join(f"{k}={v!r}" for k, v in pipeline.params.items()) or "-"))


def _parse_params(pairs: List[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--param {pair!r} is not KEY=VALUE. Fix: e.g. --param seed=3")
        params[key.strip()] = value
    return params


def run_one(name: str, params: dict[str, Any], show_progress: bool = True) -> dict[str, Any]:
    """Run one pipeline as a Prefect flow run, with a terminal progress display."""
    from flows import registry
    from flows.runner import add_listener

    pipeline = registry.get(name)
    pipeline.resolve_params(params)  # bad parameters fail before a flow run exists
    flow = pipeline.flow()
    if not show_progress:
        return flow(params=params)

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    running: set[str] = set()
    with Progress(TextColumn("[bold]{task.fields[pipeline]}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, transient=False) as bar:
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
            return flow(params=params)
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
    param: List[str] = typer.Option([], "--param", "-p", help="Parameter override KEY=VALUE."),
    json_output: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """Run a pipeline as a Prefect flow on the configured server."""
    url = _ensure_server()
    try:
        result = run_one(name, _parse_params(param), show_progress=not json_output)
    except (LookupError, ValueError) as exc:
        fail(str(exc))
    except Exception as exc:  # the flow run failed; Prefect has logged the traceback
        fail(f"pipeline '{name}' failed: {exc}\nSee the run in the UI: {url.removesuffix('/api')}/runs")
    if json_output:
        print(json.dumps(result, indent=2, default=str))
        return
    _print_summary(result)
    console.print(f"flow run: {url.removesuffix('/api')}/runs/flow-run/{result['flow_run_id']}")


@app.command("demo")
def demo(
    param: List[str] = typer.Option([], "--param", "-p", help="Override for every pipeline KEY=VALUE."),
) -> None:
    """Start the embedded server, register blocks, run every example pipeline."""
    from blocks import ensure_defaults
    from flows import registry

    url = _ensure_server()
    ensure_defaults()
    ui = url.removesuffix("/api")
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
    console.rule("done")
    console.print(f"Prefect UI: {ui}")
    for name, run_id in outcomes:
        console.print(f"  {name}: Completed  {ui}/runs/flow-run/{run_id}")
    console.print("Stop the server with `planflow server down` (or `make stop`).")


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
