"""One replica of `planflow serve`: `python -m planflow.serving TARGET --port 8001`."""

from __future__ import annotations

import argparse
import sys

from planflow.serving.app import DEFAULT_MAX_BODY_BYTES
from planflow.serving.replicas import serve_one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", help="a pipeline's name or an online path's YAML file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--poll-seconds", type=float, default=5.0)
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--deployment", default=None, help="serve only the runs of this deployment")
    args = parser.parse_args(argv)
    serve_one(args.target, args.host, args.port, args.poll_seconds, args.max_body_bytes, args.deployment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
