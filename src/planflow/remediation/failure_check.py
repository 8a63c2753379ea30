"""Whether a pool's failure-rate alert is the pool's fault, checked before failover acts.

`PlanflowPoolFailureRateHigh` counts the flow runs that failed or crashed on a work pool.
Failing over (pausing the pool, moving its waiting runs to the backup) helps when the
pool is what fails them (a broken node, image or mount); it harms when the runs' own code
does: the runs fail on the backup pool as well, the backup's own alert then pauses it,
and a pool without a backup was paused "only", stopping its healthy work. The alert may
also be stale or sent by hand. So before failover acts on this alert, the Prefect
server's records must bear it out (`not_the_pool`):

- the pool has a backup pool to move its runs to (without one, pausing only stops work:
  a person decides, the alert having reached `planflow-human` too);
- runs failed or crashed on the pool within the last FAILURE_WINDOW (none: the alert is
  stale or was not Prometheus's); a component's child run killed for memory, which its
  parent runs again with more (tagged OOM_KILLED_TAG), is not one;
- the flows failing there did not fail on another pool within that window too (then they
  fail wherever they run: their code, not the pool).

    reason = not_the_pool(client, "gpu", backup_name="cpu-spare")   # None: fail it over
"""

from __future__ import annotations

import datetime as dt

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterId,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType

from planflow.prefect.reserved import OOM_KILLED_TAG
from planflow.remediation.names import is_remediation_run

FAILURE_ALERT = "PlanflowPoolFailureRateHigh"
FAILURE_WINDOW = dt.timedelta(hours=1)  # at least the rule's window (30 min by default)
READ_LIMIT = 200
_FAILED = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.FAILED, StateType.CRASHED]))


def _failed_since(client: SyncPrefectClient, since: dt.datetime, **filters: object) -> list[FlowRun]:
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(state=_FAILED, end_time=FlowRunFilterEndTime(after_=since)),
        limit=READ_LIMIT,
        **filters,  # type: ignore[arg-type]
    )
    # a component's child killed for memory (and run again with more) is not its pool's failure
    return [
        run for run in runs if not is_remediation_run(run.work_pool_name, run.tags) and OOM_KILLED_TAG not in run.tags
    ]


def not_the_pool(client: SyncPrefectClient, pool: str, backup_name: str | None) -> str | None:
    """Why failover must not act on a failure-rate alert for `pool`; None when it should."""
    if not backup_name:
        return (
            f"{FAILURE_ALERT} on {pool}, which has no backup pool: pausing it would stop its work with nowhere to "
            "move it, so it is left running for a person to look at. Fix: find why its runs fail "
            f"(planflow runbook {FAILURE_ALERT}); to fail it over, planflow pools set <its pool> --backup-pool <pool>"
        )
    since = dt.datetime.now(dt.UTC) - FAILURE_WINDOW
    here = _failed_since(client, since, work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])))
    if not here:
        return (
            f"{FAILURE_ALERT} on {pool}, yet no flow run failed or crashed there in the last "
            f"{FAILURE_WINDOW.total_seconds() / 60:.0f} min: the alert is stale or not Prometheus's; nothing done"
        )
    flows = sorted({run.flow_id for run in here}, key=str)
    elsewhere: dict[str, set[str]] = {}
    for run in _failed_since(client, since, flow_filter=FlowFilter(id=FlowFilterId(any_=flows))):
        if run.work_pool_name and run.work_pool_name != pool:
            elsewhere.setdefault(str(run.flow_id), set()).add(run.work_pool_name)
    if elsewhere:
        names = {str(run.flow_id): run.name for run in here}
        seen = "; ".join(
            f"the flow of run {names[flow]} also on {', '.join(sorted(pools))}" for flow, pools in elsewhere.items()
        )
        return (
            f"{FAILURE_ALERT} on {pool}, but the flows failing there fail on other pools too ({seen}): the runs' "
            f"code, not the pool, so failing over would only move the failures. Fix: the runs' error (planflow "
            f"runbook {FAILURE_ALERT})"
        )
    return None
