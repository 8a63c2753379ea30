"""PSPLIB reader and benchmark runner.

``read_psplib`` reads single-mode ``.sm`` (j30) and multi-mode ``.mm`` (mm-j10) files into a
:class:`Problem` with ONE pool ``"R"`` holding the renewable capacities (resources named
``R1..R4``) and, for ``.mm``, non-renewable budgets ``N1..N2``.  Tasks are named by their
PSPLIB job number (``"1"`` is the dummy source, the last job the dummy sink).

Example::

    >>> p = read_psplib("j30/j301_1.sm")                          # doctest: +SKIP
    >>> solve(p).makespan                                          # doctest: +SKIP
    43.0

planflow ships no PSPLIB data: pass the files (``planflow bench psplib PATH...``).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from .engine import PlannerOptions, solve
from .problem import Mode, Pool, Problem, Task

_RES = re.compile(r"([RND])\s*(\d+)")


def _section(lines: list[str], title: str) -> int:
    for i, line in enumerate(lines):
        if line.strip().upper().startswith(title):
            return i
    raise ValueError(f"PSPLIB file has no {title!r} section")


def read_psplib(path: str | os.PathLike[str]) -> Problem:
    """Read a PSPLIB ``.sm`` or ``.mm`` file into a :class:`Problem`."""
    path = Path(path)
    lines = path.read_text().splitlines()
    # Precedence: "jobnr. #modes #successors successors..."
    i = _section(lines, "PRECEDENCE RELATIONS") + 2
    succ: dict[int, list[int]] = {}
    nmodes: dict[int, int] = {}
    while not lines[i].startswith("*"):
        tok = [int(x) for x in lines[i].split()]
        if tok:
            succ[tok[0]] = tok[3 : 3 + tok[2]]
            nmodes[tok[0]] = tok[1]
        i += 1
    # Requests/durations: first mode line "job mode dur r...", later ones "mode dur r...".
    i = _section(lines, "REQUESTS/DURATIONS")
    header = lines[i + 1]
    res = [f"{k}{n}" for k, n in _RES.findall(header.split("duration", 1)[-1])]
    i += 3
    rows: dict[int, list[tuple[int, list[int]]]] = {}
    job = 0
    while not lines[i].startswith("*"):
        tok = [int(x) for x in lines[i].split()]
        if tok:
            if len(tok) == len(res) + 3:
                job = tok[0]
                tok = tok[1:]
            rows.setdefault(job, []).append((tok[1], tok[2:]))
        i += 1
    i = _section(lines, "RESOURCEAVAILABILITIES")
    names = [f"{k}{n}" for k, n in _RES.findall(lines[i + 1])]
    caps = [int(x) for x in lines[i + 2].split()]
    cap = dict(zip(names, caps, strict=True))
    renew = [r for r in res if r.startswith("R")]
    nonren = [r for r in res if not r.startswith("R")]
    preds: dict[int, list[int]] = {j: [] for j in succ}
    for j, ss in succ.items():
        for s in ss:
            preds[s].append(j)
    tasks = []
    for j in sorted(succ):
        modes = []
        for dur, req in rows[j]:
            d = dict(zip(res, req, strict=True))
            modes.append(
                Mode(
                    pool="R",
                    duration=float(dur),
                    demand={r: float(d[r]) for r in renew if d[r]},
                    nonrenewable={r: float(d[r]) for r in nonren if d[r]},
                )
            )
        tasks.append(Task(str(j), tuple(modes), tuple(str(p) for p in preds[j])))
    return Problem(
        tasks=tuple(tasks),
        pools=(Pool("R", {r: float(cap[r]) for r in renew}),),
        nonrenewable_capacity={r: float(cap[r]) for r in nonren},
    )


def read_optima(path: str | os.PathLike[str]) -> dict[str, float]:
    """Known optimal makespans by instance name (``"j301_1"``, ``"j1010_1"``).

    Reads ``j30opt.sm`` (rows ``parameter instance makespan cpu``) or the mm reference CSV
    (columns ``instance,status,makespan,lower_bound``).
    """
    path = Path(path)
    out: dict[str, float] = {}
    if path.suffix == ".csv":
        with path.open() as f:
            for row in csv.DictReader(f):
                out[row["instance"]] = float(row["makespan"])
        return out
    prefix = path.name.split("opt")[0]  # j30opt.sm -> j30
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+\s*$", line)
        if m:
            out[f"{prefix}{m.group(1)}_{m.group(2)}"] = float(m.group(3))
    return out


def _optima_near(path: Path, cache: dict[Path, dict[str, float]]) -> dict[str, float]:
    """Optima from reference files next to the instance folder (j30opt.sm, *-reference.csv)."""
    root = path.resolve().parent.parent
    if root not in cache:
        opt: dict[str, float] = {}
        for ref in sorted(root.glob("*opt.sm")) + sorted(root.glob("*-reference.csv")):
            try:
                opt.update(read_optima(ref))
            except (OSError, ValueError, KeyError):
                pass
        cache[root] = opt
    return cache[root]


def run_instances(
    paths: Iterable[str | os.PathLike[str]],
    time_limit_s: float,
    solver: str = "highs",
    optima: Mapping[str, float] | None = None,
    progress: bool = False,
) -> list[dict]:
    """Solve each PSPLIB file; one row per instance for benchmarks and the CLI.

    Row keys: instance, jobs, makespan, lower_bound, status, solver, solve_seconds,
    heuristic_makespan, optimum (None if unknown), deviation_pct (None if unknown).
    """
    cache: dict[Path, dict[str, float]] = {}
    rows = []
    for p in paths:
        p = Path(p)
        problem = read_psplib(p)
        plan = solve(problem, PlannerOptions(solver=solver, time_limit_s=time_limit_s))
        name = p.stem
        opt = (optima or {}).get(name)
        if opt is None:
            opt = _optima_near(p, cache).get(name)
        dev = None if opt is None else 100.0 * (plan.makespan - opt) / opt if opt else 0.0
        rows.append(
            {
                "instance": name,
                "jobs": len(problem.tasks) - 2,
                "makespan": plan.makespan,
                "lower_bound": plan.lower_bound,
                "status": plan.status,
                "solver": plan.solver,
                "solve_seconds": round(plan.solve_seconds, 4),
                "heuristic_makespan": plan.heuristic_makespan,
                "optimum": opt,
                "deviation_pct": None if dev is None else round(dev, 4),
            }
        )
        if progress:
            print(rows[-1], flush=True)
    return rows


def write_csv(rows: list[dict], path: str | os.PathLike[str]) -> None:
    """Write :func:`run_instances` rows as CSV (header from the first row's keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        if not rows:
            return
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
