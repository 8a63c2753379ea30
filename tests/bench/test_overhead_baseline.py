"""The overhead benchmark's plain Prefect flow does the work it stands for: each of its
tasks runs and persists its result, as each planflow step does (none read back from
another task's result)."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from bench.bench_overhead import prefect_flow


def test_each_task_of_the_plain_flow_runs_and_persists_its_own_result(prefect_server):
    state = prefect_flow(5)(return_state=True)
    assert state.is_completed() and state.result() == [1] * 5
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    assert len(runs) == 5
    # Prefect's default key (inputs, source, flow run) is one key for all five: four would be Cached
    assert sorted(r.state.name for r in runs) == ["Completed"] * 5
