"""`planflow results gc|size`: the results folder (`.planflow/results`), kept bounded.

    $ planflow results gc --older-than 7d --keep-last 200
    deleted 812 results (231.4 MiB); kept 200, protected 37 (a retry may need them); folder 18.2 MiB

Results a retry may still need are never deleted (runtime/results.py says which).
"""

from __future__ import annotations

import json

import typer

from planflow.cli.common import ensure_server, fail, say
from planflow.core.caching import parse_duration
from planflow.runtime.results import collect, folder_bytes, results_folder

results_app = typer.Typer(help="The results folder: its size, and deleting old results.", no_args_is_help=True)
USAGE = 2


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


@results_app.command("gc")
def gc(
    older_than: str | None = typer.Option(None, "--older-than", help="Delete results older than this: 7d, 12h, 30m."),
    keep_last: int | None = typer.Option(None, "--keep-last", min=0, help="Keep the N newest result files."),
    max_mib: float | None = typer.Option(None, "--max-mib", help="Delete the oldest until the folder fits."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be deleted; delete nothing."),
    json_output: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Delete old results, never those a retry may still need (recent, or of unfinished runs)."""
    if older_than is None and keep_last is None and max_mib is None:
        fail("say what to delete: --older-than 7d, --keep-last N and/or --max-mib N", USAGE)
    try:
        age = parse_duration(older_than, "--older-than").total_seconds() if older_than is not None else None
    except ValueError as exc:
        fail(str(exc), USAGE)
    if max_mib is not None and max_mib <= 0:
        fail(f"--max-mib {max_mib:g}: must be > 0. Fix: e.g. --max-mib 2048", USAGE)
    ensure_server()  # which runs are unfinished is asked of the server
    report = collect(
        older_than=age, keep_last=keep_last, max_bytes=max_mib * 2**20 if max_mib else None, dry_run=dry_run
    )
    figures = report.to_dict()
    if json_output:
        print(json.dumps({**figures, "dry_run": dry_run}, indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    say(
        f"{verb} {figures['deleted']} results ({_mib(figures['freed_bytes'])}); kept {figures['kept']}, "
        f"protected {figures['protected']} (a retry may need them); folder {_mib(figures['bytes_after'])}"
    )


@results_app.command("size")
def size() -> None:
    """The results folder's size (also the metric planflow_results_bytes)."""
    folder = results_folder()
    say(f"{folder}: {_mib(folder_bytes(folder))}")
