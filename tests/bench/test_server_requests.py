"""The benchmarks' count of the Prefect server's requests, read from its access log: lines
as a benchmark's server writes them (uvicorn's access log under
PREFECT_SERVER_LOGGING_LEVEL=INFO, copied from a fleet burst's server log)."""

from __future__ import annotations

from bench.server_requests import count_requests, log_offset, top_routes

ACCESS = '{} | INFO    | uvicorn.access - 127.0.0.1:51108 - "{} HTTP/1.1" {}\n'
LINES = (
    ACCESS.format("18:44:10.853", "GET /api/csrf-token?client=c7c9be8d-595a-43fd-bb40-8d2e568cace6", 422)
    + "18:44:15.013 | INFO    | prefect.server.services.scheduler - Scheduled 0 runs.\n"
    + ACCESS.format("18:44:18.467", "GET /api/work_pools/bench-fleet", 200)
)
LATER = (
    ACCESS.format("18:46:12.837", "PATCH /api/artifacts/a6dbc59b-30c0-415e-8e59-790fa883ef1e", 204)
    + ACCESS.format("18:46:12.901", "PATCH /api/artifacts/0d1e2f30-4a5b-4c6d-8e7f-901a2b3c4d5e", 204)
    + ACCESS.format("18:47:09.920", "POST /api/block_documents/filter", 200)
    + '18:47:10.002 | ERROR   | prefect.server - "POST /api/x HTTP/1.1" 500 in a message, not an access line\n'
)


def test_requests_are_counted_by_route_from_an_offset(tmp_path):
    log = tmp_path / "server.log"
    assert log_offset(log) == 0 and not count_requests(log, 0)  # no log yet: nothing
    log.write_text(LINES)
    start = log_offset(log)
    assert count_requests(log, 0) == {"GET /api/csrf-token 422": 1, "GET /api/work_pools/bench-fleet 200": 1}
    with open(log, "a") as f:
        f.write(LATER)
    counts = count_requests(log, start)
    assert counts == {"PATCH /api/artifacts/{id} 204": 2, "POST /api/block_documents/filter 200": 1}
    assert count_requests(log, 0, start) == count_requests(log, 0) - counts


def test_the_top_routes_name_the_most_frequent_and_sum_the_rest():
    from collections import Counter

    counts = Counter({"a": 5, "b": 3, "c": 1, "d": 1})
    assert top_routes(counts, 2) == {"a": 5, "b": 3, "other": 2}
    assert top_routes(counts, 4) == dict(counts)
