"""The Prefect server's requests over a stretch of a benchmark, counted by route from its access log.

What planflow costs a shared server is mostly how many requests it makes: on the
benchmarks' SQLite server each costs 4-25 ms of the server's CPU whatever it asks
(docs/overhead-history.md), and the server shares the cores the components run on. Request
counts are also far steadier than timings on a noisy machine, so a change that takes
requests off a run shows in them when its time is lost in the noise.

The benchmarks' servers (tempserver.TempServer) run with uvicorn's access log on
(`PREFECT_SERVER_LOGGING_LEVEL=INFO`: one line per request in the server's log). A count
is taken between two offsets of that log:

    start = log_offset(log)
    ... the stretch measured ...
    counts = count_requests(log, start)      # {"POST /api/artifacts/ 201": 40, ...}
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

ACCESS = re.compile(rb'uvicorn\.access - [^"]*"(?P<method>[A-Z]+) (?P<path>[^ ?"]+)[^"]*" (?P<status>\d{3})')
ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TOP = 12  # the routes a report names; the rest are summed as "other"


def log_offset(log: Path) -> int:
    """Where the log ends now (0 when there is none yet)."""
    try:
        return log.stat().st_size
    except FileNotFoundError:
        return 0


def count_requests(log: Path, start: int, end: int | None = None) -> Counter[str]:
    """The requests logged between byte offsets `start` and `end` (default: the log's end),
    by "METHOD route status", each id in a route shown as {id}."""
    counts: Counter[str] = Counter()
    try:
        with open(log, "rb") as f:
            f.seek(start)
            text = f.read() if end is None else f.read(max(0, end - start))
    except FileNotFoundError:
        return counts
    for match in ACCESS.finditer(text):
        route = ID.sub(b"{id}", match["path"]).decode(errors="replace")
        counts[f"{match['method'].decode()} {route} {match['status'].decode()}"] += 1
    return counts


def top_routes(counts: Counter[str], top: int = TOP) -> dict[str, int]:
    """The `top` most frequent routes, the rest summed under "other"."""
    named = dict(counts.most_common(top))
    rest = sum(counts.values()) - sum(named.values())
    return {**named, "other": rest} if rest else named
