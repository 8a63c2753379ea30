"""One replica of `planflow serve`: `python -m planflow.serving TARGET --port 8001`."""

from __future__ import annotations

import argparse
import sys

from planflow.serving.app import DEFAULT_MAX_BODY_BYTES
from planflow.serving.loader import ServedRuns
from planflow.serving.replicas import serve_one


def parser() -> argparse.ArgumentParser:
    """A replica's command line, as replicas.replica_arguments writes it."""
    line = argparse.ArgumentParser(description=__doc__)
    line.add_argument("target", help="a pipeline's name or an online path's YAML file")
    line.add_argument("--host", default="127.0.0.1")
    line.add_argument("--port", type=int, required=True)
    line.add_argument("--poll-seconds", type=float, default=5.0)
    line.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    line.add_argument("--deployment", default=None, help="serve only the runs of this deployment")
    line.add_argument("--tag", action="append", default=[], help="serve only the runs with this tag (repeatable)")
    return line


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    served = ServedRuns(args.deployment, tuple(args.tag))
    serve_one(args.target, args.host, args.port, args.poll_seconds, args.max_body_bytes, served)
    return 0


if __name__ == "__main__":
    sys.exit(main())
