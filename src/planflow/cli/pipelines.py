"""`planflow pipelines [NAME]`, `planflow plan NAME` and `planflow run NAME`.

A pipeline that fails to load (a cycle, a typo in `uses:`, cpu=-1, an import error in
the user's module) is reported with its own error and exit code 1, never a traceback;
a bad `--param` is a usage error (exit code 2). Only a flow run that fails says
"pipeline ... failed", with the address of its run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from pydantic_core import to_jsonable_python
from rich.table import Table
from rich.text import Text

from planflow.cli.common import (
    check_writable,
    console,
    ensure_server,
    fail,
    run_logs_off_the_terminal,
    run_url,
    say,
    stdout_on_stderr,
    ui_url,
    warn,
    write_file,
)
from planflow.cli.interrupt import exit_within
from planflow.cli.params import ParamError, parse_pairs, typed_values
from planflow.cli.progress import run_with_progress
from planflow.core import discovery
from planflow.core.pipeline import Pipeline
from planflow.core.steps import REQUIRED
from planflow.planner import PlanningError
from planflow.prefect.blocks.registry import DEFAULT_POOL, load_pools
from planflow.runtime import reporting
from planflow.runtime.dask_cluster import DaskClusterError, worker_offers
from planflow.runtime.events import Reporter, RunInfo, subscribe
from planflow.runtime.flow import to_flow
from planflow.runtime.history import work_scale
from planflow.runtime.memory import MemoryFigure
from planflow.runtime.planning import PoolError, allowed_pools, no_pool_block
from planflow.runtime.runner import PipelineRunError, make_plan

MODES = ("inprocess", "distributed", "dask")
# The keys of Pipeline.totals() as a reader wants them: with their units.
TOTAL_LABELS = {
    "components": "components",
    "cpu_seconds": "CPU core·s",
    "gpu_seconds": "GPU·s",
    "mem_gib_seconds": "memory GiB·s",
    "total_seconds": "sum of estimates (s)",
    "critical_path_seconds": "critical path (s)",
    # one component's demand, not the run's peak (which the plan's overlaps set; see `planflow plan`)
    "peak_cpu": "largest component's CPU cores",
    "peak_mem_gib": "largest component's memory GiB",
    "peak_gpu": "largest component's GPUs",
}
USAGE = 2  # exit code of a bad command line (as typer's own usage errors)


class _PlannedRun(Reporter):
    """The id of the flow run this command's call made, once it is planned."""

    flow_run_id: str | None = None

    def on_planned(self, run: RunInfo) -> None:
        self.flow_run_id = run.flow_run_id


class RunInterrupted(Exception):
    """The run was interrupted (Ctrl-C): Prefect set it Crashed."""

    def __init__(self, flow_run_id: str | None) -> None:
        super().__init__("interrupted (Ctrl-C)")
        self.flow_run_id, self.state = flow_run_id, "Crashed"


class RunFailed(RuntimeError):
    """The flow run of a pipeline ended in a state other than Completed; the message
    is that state's, and `flow_run_id` names the run."""

    def __init__(self, message: str, flow_run_id: str | None, state: str = "Failed") -> None:
        super().__init__(message)
        self.flow_run_id, self.state = flow_run_id, state


def parse_params(param: list[str]) -> dict[str, str]:
    """The --param pairs as text; exits with code 2 naming each malformed one."""
    try:
        return parse_pairs(param)
    except ParamError as exc:
        fail(str(exc), USAGE)


def load(name: str) -> Pipeline:
    """The pipeline called `name`; exits with its load error (or the known names)."""
    try:
        return discovery.get(name)
    except discovery.UnknownPipelineError as exc:  # a name the project does not have: a usage error
        fail(str(exc), USAGE)
    except (LookupError, ValueError) as exc:
        fail(str(exc))


def prepare(pipeline: Pipeline, raw: dict[str, str], require: bool = True) -> tuple[Any, dict[str, Any]]:
    """The pipeline's flow and its parameters with `raw` (--param text) applied; exits
    naming every bad value before any flow run exists. `require=False` (a plan, not a
    run): a REQUIRED parameter not given stays REQUIRED."""
    try:
        values = pipeline.resolve_params(typed_values(pipeline, raw, require), require)
        return to_flow(pipeline), values
    except ParamError as exc:
        fail(str(exc), USAGE)
    except ValueError as exc:  # PipelineError
        fail(str(exc))
    except NameError as exc:  # typing.get_type_hints on a component's annotations
        fail(
            f"pipeline '{pipeline.name}': the type hints of its components do not resolve "
            f"({type(exc).__name__}: {exc}). Fix: import or define that name in the component's module"
        )


def check_run_target(pipeline: Pipeline, mode: str, pool: str) -> None:
    """Exits naming the problem, before any flow run exists, when the run could not start:
    a --pool with no ResourcePool block, a component that fits none of the pools it may
    use (cpu=64 on a pool of 2; a pool name with no block), or --mode dask with no
    scheduler answering. Each made a Failed flow run (which the failure alerts count, and
    the retry automation ran again, to fail the same way)."""
    if mode in ("inprocess", "distributed"):
        pools = load_pools()
        if mode == "inprocess" and pool not in pools:
            fail(f"--pool {pool}: {no_pool_block(pool, pools)}", USAGE)
        usable = {pool: pools[pool]} if mode == "inprocess" else pools  # distributed: whichever is ready then
        # memory is left to the run: it plans with what a step was seen to need, which may fit where its
        # declaration does not (memory.py); a cpu or gpu no pool has, or a pool with no block, never fits
        capacities = {name: p.capacity() for name, p in usable.items()}
        try:
            allowed_pools(pipeline, capacities, set(pools))
        except PoolError as declared:
            unknown_memory = {name: MemoryFigure(0.0, "checked by the run") for name in pipeline.steps}
            try:
                allowed_pools(pipeline, capacities, set(pools), unknown_memory)
            except PoolError:  # not memory alone: said as declared
                fail(f"{declared}\n(nothing was started: no flow run was made)", USAGE)
    if mode == "dask":
        try:
            worker_offers()  # the plan asks again within seconds: answered from what this read saw
        except DaskClusterError as exc:
            fail(str(exc))


def execute(pipeline: Pipeline, flow: Any, values: dict[str, Any], mode: str, show_progress: bool) -> dict:
    """Call the flow (one flow run) and return its result; RunFailed when the run did
    not complete, naming the run."""

    def call() -> Any:
        return flow(**values, mode=mode, return_state=True)

    seen = _PlannedRun()
    unsubscribe = subscribe(seen)
    try:
        state = run_with_progress(call, pipeline, console) if show_progress else call()
    except KeyboardInterrupt:  # Prefect has set the run Crashed: said here, with where its log is
        raise RunInterrupted(seen.flow_run_id) from None
    finally:
        unsubscribe()
    if not state.is_completed():
        message = (state.message or state.name).removeprefix("Flow run encountered an exception: ")
        message = message.removeprefix(f"{PipelineRunError.__name__}: ")  # it names the step itself
        raise RunFailed(message, str(state.state_details.flow_run_id or "") or None, state.name)
    return state.result()


def interrupted(name: str, exc: RunInterrupted, url: str) -> None:
    """Say that the run was interrupted, and where its log is; exit 130 (SIGINT's)."""
    if exc.flow_run_id:
        warn(f"pipeline '{name}' was interrupted (Ctrl-C): its flow run is Crashed. Its log: {_log_url(exc, url)}")
    else:  # before its plan: the run may not exist yet
        warn(f"pipeline '{name}' was interrupted (Ctrl-C) before it was planned. Its runs: {_log_url(exc, url)}")
    exit_within(130)  # its components' threads, which Python cannot stop, do not hold the exit
    raise typer.Exit(130)


def failed_run(name: str, exc: Exception, url: str) -> str:
    """The one line that says a pipeline's run failed, and where its log is."""
    text = str(exc) or type(exc).__name__
    what = text if f"pipeline '{name}'" in text else f"pipeline '{name}' failed: {text}"
    return f"{what.rstrip('.')}. Its log and traceback: {_log_url(exc, url)}"


def failed_run_json(name: str, exc: Exception, url: str) -> str:
    """`run --json`'s document for a run that did not complete (a script reads the state,
    the run's id and the error, not only an exit code)."""
    document = {
        "pipeline": name,
        "state": getattr(exc, "state", None),  # None: the run's end was not read (e.g. the server went away)
        "flow_run_id": getattr(exc, "flow_run_id", None),
        "error": str(exc) or type(exc).__name__,
        "error_type": type(exc).__name__,
        "log_url": _log_url(exc, url),
    }
    return json.dumps(document, indent=2)


def as_json(document: Any) -> str:
    """A summary or plan as JSON: pydantic models and dataclasses (parameters) as their
    fields, anything else as its text."""
    return json.dumps(to_jsonable_python(document, fallback=str), indent=2)


def _log_url(exc: Exception, url: str) -> str:
    run_id = getattr(exc, "flow_run_id", None)
    return run_url(ui_url(url), run_id, tab="Logs") if run_id else f"{ui_url(url)}/runs"


def _kills(step: dict[str, Any]) -> str:
    """ "1 (0.5)": kills for memory and the limit it last ran at, else "-"."""
    if not step.get("oom_kills"):
        return "-"
    return f"{step['oom_kills']} ({step.get('mem_limit_gib') or 0:.3g})"


def print_summary(result: dict[str, Any]) -> None:
    # steps measured (in a process of their own, or a child flow run): use beside declaration
    steps = result["steps"].values()
    measured = any(step.get("usage") is not None or step.get("peak_mem_gib") is not None for step in steps)
    usage_columns = ("cpu declared / used s", "mem GiB declared / peak") if measured else ()
    killed = any(step.get("oom_kills") for step in steps)
    oom_columns = ("OOM kills (last limit GiB)",) if killed else ()
    retried = any(step.get("attempts", 1) > 1 for step in steps)
    attempt_columns = ("attempts",) if retried else ()
    table = Table(
        "component",
        "state",
        "pool",
        "seconds",
        *usage_columns,
        *oom_columns,
        *attempt_columns,
        "key metric",
        title=Text(result["pipeline"]),
    )
    for name, step in result["steps"].items():
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in step["metrics"].items())
        seconds = "-" if step["seconds"] is None else f"{step['seconds']:.2f}"
        usage = _usage_cells(step) if measured else ()
        kills = (_kills(step),) if killed else ()
        attempts = (str(step.get("attempts", 1)),) if retried else ()
        table.add_row(*map(Text, (name, step["state"], step["pool"], seconds, *usage, *kills, *attempts, metrics)))
    console.print(table)


def _usage_cells(step: dict[str, Any]) -> tuple[str, str]:
    def used(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return (
        f"{step['declared_cpu']:g} / {used(step.get('cpu_seconds'), 2)}",
        f"{step['declared_mem_gib']:g} / {used(step.get('peak_mem_gib'), 3)}",
    )


def pipelines(
    name: str | None = typer.Argument(None, help="Show one pipeline in detail."),
    json_output: bool = typer.Option(False, "--json", help="Print the list (or the pipeline) as JSON."),
) -> None:
    """List the pipelines (or describe one): components, parameters, demand and time."""
    if name:
        pipeline = load(name)
        if json_output:
            print(as_json(_described(pipeline)))
        else:
            _describe(pipeline)
        return
    listed = [_listed(item) for item in discovery.discover()]
    broken = [f"{row['source']} failed to load: {row['error']}" for row in listed if row["error"] is not None]
    if json_output:
        print(as_json(listed))
    else:
        _print_list(listed)
    for line in broken:
        warn(line)
    if broken:
        raise typer.Exit(1)


def _print_list(listed: list[dict[str, Any]]) -> None:
    table = Table(
        "pipeline", "components", "critical path (s)", "sum of estimates (s)", "CPU core·s", "parameters", "source"
    )
    for column in table.columns:
        column.overflow = "fold"  # a narrow terminal wraps a cell; it never cuts one short
    for row in listed:
        if row["error"] is not None:
            cells = (row["name"], "failed to load", "-", "-", "-", "-", row["source"])
        else:
            cells = (
                row["name"],
                str(row["components"]),
                f"{row['critical_path_seconds']:.1f}",
                f"{row['total_seconds']:.1f}",
                f"{row['cpu_seconds']:.1f}",
                str(len(row["parameters"])),
                row["source"],
            )
        table.add_row(*map(Text, cells))
    console.print(table)
    say("Steps, parameters and their defaults: planflow pipelines NAME")


def _listed(item: discovery.Found) -> dict[str, Any]:
    """One source as the list shows it: its totals by the declared estimates, or its load
    error (`error` is None for a pipeline that loaded)."""
    row: dict[str, Any] = {"name": item.name, "source": _shown_source(item.source), "error": None}
    if item.pipeline is None:
        return row | {"error": item.error or "(no message)"}
    try:
        totals = item.pipeline.totals(work_scale(item.pipeline))
        params = shown_params(item.pipeline)
    except Exception as exc:  # a user's pipeline object may raise anything: report it
        return row | {"error": f"{type(exc).__name__}: {exc}"}
    return row | {"description": item.pipeline.description, "parameters": params, **totals}


def shown_params(pipeline: Pipeline) -> dict[str, Any]:
    """The pipeline's parameters and their defaults, a REQUIRED one as "REQUIRED" (JSON has
    no such value; it is no default)."""
    return {name: "REQUIRED" if value is REQUIRED else value for name, value in pipeline.params.items()}


def _shown_source(source: str) -> str:
    """A YAML file's path relative to the current folder when that is shorter (below it,
    or a few `..` up from a subfolder of the project), else as it is."""
    path = Path(source)
    if not path.is_absolute():
        return source
    relative = os.path.relpath(path, Path.cwd())
    return relative if len(relative) < len(source) else source


def _described(pipeline: Pipeline) -> dict[str, Any]:
    """One pipeline as `pipelines NAME` shows it: its steps in the order they can run,
    each with its declared demand and its estimate at the pipeline's own parameters."""
    scale = work_scale(pipeline)
    steps = []
    for name in pipeline.topological_order():
        step = pipeline.steps[name]
        spec, component = step.spec, step.component
        expiry = getattr(component, "cache_expiration", None)
        steps.append(
            {
                "step": name,
                "after": list(pipeline.upstream(name)),
                "cpu": spec.cpu,
                "gpu": spec.gpu,
                "mem_gib": spec.mem_gib,
                "estimate_seconds": spec.est_seconds * scale.get(name, 1.0),
                "work_scale": scale.get(name, 1.0),
                "pools": list(spec.pools),
                "runs_in": pipeline.isolation_of(name),
                "cache": "inputs" if getattr(component, "cache_mode", None) == "inputs" else "run",
                "cache_expiration_seconds": expiry.total_seconds() if expiry else None,
                "retries": getattr(component, "retries", 0) or 0,
                "timeout_seconds": getattr(component, "timeout_seconds", None),
            }
        )
    return {
        "name": pipeline.name,
        "description": pipeline.description,
        "parameters": shown_params(pipeline),
        "retries": pipeline.retries,
        "steps": steps,
        "totals": pipeline.totals(scale),
    }


def _describe(pipeline: Pipeline) -> None:
    described = _described(pipeline)
    console.print(Text.assemble((pipeline.name, "bold"), f": {pipeline.description}" if pipeline.description else ""))
    table = Table(
        "step", "after", "cpu", "gpu", "mem GiB", "estimate (s)", "pools", "runs in", "cache", "retries", "timeout (s)"
    )
    for step in described["steps"]:
        factor = step["work_scale"]
        expiry = step["cache_expiration_seconds"]
        timeout = step["timeout_seconds"]
        row = (
            step["step"],
            ", ".join(step["after"]) or "-",
            f"{step['cpu']:g}",
            str(step["gpu"]),
            f"{step['mem_gib']:g}",
            f"{step['estimate_seconds']:g}" + (f" (x{factor:.3g} for its work)" if factor != 1.0 else ""),
            ", ".join(step["pools"]) or "any",
            step["runs_in"],
            "run" if step["cache"] == "run" else (f"inputs, {_span(expiry)}" if expiry else "inputs"),
            str(step["retries"]),
            "-" if timeout is None else f"{timeout:g}",
        )
        table.add_row(*map(Text, row))
    console.print(table)
    totals = Table("total (by the declared estimates)", "value")
    for key, value in described["totals"].items():
        totals.add_row(TOTAL_LABELS.get(key, key), f"{value:g}")
    console.print(totals)
    say("parameters: " + (", ".join(f"{k}={v!r}" for k, v in pipeline.params.items()) or "-"))
    if pipeline.retries:
        say(f"a failed run is retried {pipeline.retries} time(s) as a whole (its completed steps are read back)")


def _span(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} s"


def plan(
    name: str = typer.Argument(..., help="Pipeline name (see `planflow pipelines`)."),
    json_output: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    gantt: str | None = typer.Option(None, help="Also write the Gantt chart to this PNG file."),
    mode: str = typer.Option(
        "inprocess",
        help="inprocess: plan on the `local` pool only; distributed: over every pool; "
        "dask: over the pools the Dask workers offer.",
    ),
    param: list[str] = typer.Option(
        [], "--param", "-p", help="Parameter override KEY=VALUE (scales components declared with scales_with)."
    ),
    pool: str = typer.Option(
        DEFAULT_POOL, "--pool", help="inprocess: the ResourcePool this machine's components use (see pools ls)."
    ),
) -> None:
    """Plan a pipeline over the resource pools without running it."""
    try:
        raw = parse_pairs(param)
    except ParamError as exc:
        fail(str(exc), USAGE)  # as `planflow run` says it
    if gantt:
        check_writable(Path(gantt), "--gantt")
    pipeline = load(name)
    _, values = prepare(pipeline, raw, require=False)  # a plan needs no data path
    ensure_server()
    if mode == "inprocess" and pool not in (pools := load_pools()):
        fail(f"--pool {pool}: {no_pool_block(pool, pools)}", USAGE)  # as `planflow run` says it
    try:
        pp = make_plan(pipeline, mode=mode, local_pool=pool, params=values)
    except PoolError as exc:  # a component no pool can hold: as `planflow run` refuses it
        fail(str(exc), USAGE)
    except (LookupError, ValueError, PlanningError) as exc:
        fail(str(exc))
    totals = pipeline.totals(work_scale(pipeline, values))
    not_given = sorted(key for key, value in values.items() if value is REQUIRED)
    if gantt:
        write_file(Path(gantt), reporting.gantt_png(pp, title=f"{name}: plan"), "--gantt")
    if json_output:
        document = {
            "pipeline": name,
            "plan": pp.plan.to_dict(),
            "figures": reporting.plan_figures(pp),
            "components": reporting.plan_rows(pp),
            "totals": totals,
            "not_given": not_given,
        }
        print(as_json(document))
        return
    table = Table(
        "component",
        "pool",
        "start (s)",
        "finish (s)",
        "cpu",
        "gpu",
        "mem GiB",
        "mem from",
        "estimate from",
        title=f"plan: {name}",
    )
    for row in reporting.plan_rows(pp):
        cells = (
            row["component"],
            row["pool"],
            f"{row['start_s']:.2f}",
            f"{row['finish_s']:.2f}",
            f"{row['cpu']:g}",
            f"{row['gpu']:g}",
            f"{round(row['mem_gib'], 4):g}",  # a learned figure has every digit of a measurement
            row["mem_from"],
            row["estimate"],
        )
        table.add_row(*map(Text, cells))
    console.print(table)
    f = reporting.plan_figures(pp)
    say(
        f"makespan {f['makespan_s']:.2f} s · lower bound {f['lower_bound_s']:.2f} s · gap {f['gap']:.1%} · "
        f"{f['status']} ({f['solver']}, {f['solve_seconds']:.3f} s) · list scheduling {f['heuristic_makespan_s']:.2f} s"
    )
    say(
        f"by the declared estimates: demand {totals['cpu_seconds']:.1f} core·s, {totals['gpu_seconds']:.1f} GPU·s, "
        f"{totals['mem_gib_seconds']:.1f} GiB·s · sum {totals['total_seconds']:.1f} s · "
        f"critical path {totals['critical_path_seconds']:.1f} s (the plan uses the estimates in its table)"
    )
    if not_given:
        say(
            f"planned without {', '.join(not_given)} (required to run, not given here): the components that "
            f"scale with them are planned at their declared work; --param gives them"
        )
    if gantt:  # said as `calendar --png` says it (with --json: stdout is the document alone)
        say(f"wrote {gantt}")


def run(
    name: str = typer.Argument(..., help="Pipeline name (see `planflow pipelines`)."),
    param: list[str] = typer.Option([], "--param", "-p", help="Parameter override KEY=VALUE."),
    json_output: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
    mode: str = typer.Option(
        "inprocess",
        help="inprocess: components are tasks of one flow run; "
        "distributed: each runs as a flow run on its planned work pool; "
        "dask: each runs as a task on the Dask cluster (planflow dask up).",
    ),
    refresh: bool = typer.Option(
        False, "--refresh", help="Recompute the components cached across runs (cache='inputs') and store anew."
    ),
    pool: str = typer.Option(
        DEFAULT_POOL, "--pool", help="inprocess: the ResourcePool this machine's components use (see pools ls)."
    ),
) -> None:
    """Run a pipeline as a Prefect flow on the configured server."""
    if mode not in MODES:
        fail(f"--mode {mode!r}: must be one of {', '.join(MODES)}", USAGE)
    raw = parse_params(param)
    pipeline = load(name)
    flow, values = prepare(pipeline, raw)  # every input problem before a server starts
    values = {**values, "refresh": True} if refresh else values
    values = {**values, "local_pool": pool} if pool != DEFAULT_POOL else values
    url = ensure_server()
    check_run_target(pipeline, mode, pool)
    try:
        # the traceback is in the run's log, linked below; with --json, stdout holds the JSON alone
        with run_logs_off_the_terminal(tracebacks_only=True), stdout_on_stderr(json_output):
            result = execute(pipeline, flow, values, mode, show_progress=not json_output)
    except RunInterrupted as exc:
        if json_output:
            print(failed_run_json(name, exc, url))
        interrupted(name, exc, url)
    except Exception as exc:  # the flow run failed; Prefect has logged the traceback to the server
        if json_output:
            print(failed_run_json(name, exc, url))
        fail(failed_run(name, exc, url))
    if json_output:
        print(as_json(result))
        return
    print_summary(result)
    say(f"flow run: {run_url(ui_url(url), result['flow_run_id'])}")
