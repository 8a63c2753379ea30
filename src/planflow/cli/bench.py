"""`planflow bench psplib`: the planner on standard instances (no server needed)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from planflow.cli.common import console, fail, say
from planflow.planner import PlanningError
from planflow.planner.psplib import run_instances, write_csv

bench_app = typer.Typer(help="Planner benchmarks on standard instances.", no_args_is_help=True)


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
    files = _instance_files(paths)
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
        say(
            f"optimum found on {hits}/{len(known)}; mean solve "
            f"{sum(r['solve_seconds'] for r in rows) / len(rows):.2f} s"
        )
    if csv:
        write_csv(rows, csv)
        say(f"wrote {csv}")


def _instance_files(paths: list[str]) -> list[Path]:
    """The .sm/.mm files named, or held by the folders named; exits naming a missing one."""
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
    return files
