"""What `planflow serve --replicas N` tells each replica reaches it: its runs to serve too."""

from __future__ import annotations

import pytest

from planflow.serving.__main__ import parser
from planflow.serving.loader import ServedRuns
from planflow.serving.replicas import replica_arguments


@pytest.mark.parametrize(
    "served",
    [ServedRuns(), ServedRuns(deployment="fraud-risk/nightly"), ServedRuns(tags=("release", "eu"))],
    ids=["every-run", "a-deployment", "two-tags"],
)
def test_a_replica_parses_back_the_runs_it_may_serve(served):
    args = parser().parse_args(replica_arguments("fraud-risk", "127.0.0.1", 8001, 2.5, 4096, served))
    assert ServedRuns(args.deployment, tuple(args.tag)) == served
    assert (args.target, args.port, args.poll_seconds, args.max_body_bytes) == ("fraud-risk", 8001, 2.5, 4096)
