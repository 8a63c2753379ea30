"""Moving the runs that wait on an unhealthy pool to its backup pool (the failover's
second half, and each re-check of a pool it paused): each run cancelled and resubmitted
on the backup pool's deployment of the same flow, re-planned on the backup's
capacities, at its own scheduled time; or kept, saying why."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    FlowFilter,
    FlowFilterId,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.states import Cancelled, Scheduled

from planflow.prefect.blocks.resource_pool import ResourcePool
from planflow.prefect.jobvars import job_variables
from planflow.remediation.planning import replan_on_backup
from planflow.remediation.pool_alert import PoolAlert


def move_all(
    client: SyncPrefectClient,
    alert: PoolAlert,
    runs: list[FlowRun],
    backup_of_pool: tuple[str | None, str | None, ResourcePool | None],
    dry: bool,
) -> dict[str, Any]:
    """Move each waiting run of the alert's pool to its backup pool (or say why it stays);
    `backup_of_pool` is `pools.backup_of(alert.pool)`."""
    source_name, backup_name, backup = backup_of_pool
    details: dict[str, Any] = {
        "work_pool": alert.pool,
        "resource_pool": source_name,
        "backup_pool": backup_name,
        "backup_work_pool": backup.work_pool if backup else None,
        "cancelled": [],
        "resubmitted": [],
        "kept": [],
        "kept_ids": [],
        "replans": {},
    }
    if backup is not None and runs:
        try:  # pools that back each other up bounced their runs between them
            details["backup_paused"] = client.read_work_pool(backup.work_pool).is_paused
        except Exception:  # noqa: BLE001 - a missing work pool: the resubmission says so
            details["backup_paused"] = False
    for run in runs:
        _move(client, alert, run, backup_name, backup, dry, details)
    return details


def stranded_reason(alert: PoolAlert, details: dict[str, Any]) -> str:
    """Why runs that were to fail over did not ("": none stranded, notes written); the
    outcome is then "failed", so someone is told."""
    audit, pool = alert.audit, alert.pool
    source_name, backup_name, backup_work_pool = (
        details["resource_pool"],
        details["backup_pool"],
        details["backup_work_pool"],
    )
    stranded = ""
    if backup_work_pool is None and backup_name:
        missing = (
            f"its backup pool '{backup_name}' (ResourcePool {source_name!r}) does not exist: paused only, "
            f"{len(details['kept'])} waiting run(s) kept queued. Fix: planflow pools set {source_name} "
            "--backup-pool <an existing pool>, or create that pool"
        )
        if details["kept"]:
            stranded = missing
        else:
            audit.note(missing)
    elif backup_work_pool is None:
        audit.note(
            f"work pool {pool} has no backup pool (ResourcePool {source_name!r}): "
            "paused only, its waiting runs kept queued"
        )
    elif details["kept"]:
        stranded = (
            f"{len(details['kept'])} waiting run(s) could not move to {backup_work_pool} "
            f"({'; '.join(details['kept'])}). Fix: deploy those flows to work pool {backup_work_pool} "
            f"(prefect deploy ... --pool {backup_work_pool}), or resume {pool} once its workers are back"
        )
    if stranded:
        audit.note(stranded)
    return stranded


def _move(
    client: SyncPrefectClient,
    alert: PoolAlert,
    run: FlowRun,
    backup_name: str | None,
    backup: ResourcePool | None,
    dry: bool,
    details: dict[str, Any],
) -> None:
    """Cancel one waiting run and resubmit it on the backup pool, or say why it stays."""
    audit, pool = alert.audit, alert.pool
    audit.affected.append(str(run.id))
    target, flow_name, why = None, "", ""
    if "component" in run.tags:
        why = "a component run: cancelled; its pipeline run fails and is retried, re-planned on ready pools"
    elif backup is None:
        why = "no backup pool: kept queued, it starts when the pool is resumed"
    elif run.deployment_id is None:
        why = "not from a deployment: kept queued"
    elif details.get("backup_paused"):
        why = f"the backup pool's work pool {backup.work_pool} is paused too: kept queued"
    else:
        flow_name = client.read_flow(run.flow_id).name
        target = _equivalent_deployment(client, run.flow_id, backup.work_pool)
        if target is None:
            why = f"flow {flow_name} has no deployment on {backup.work_pool}: kept queued"
    if target is None and "component" not in run.tags:
        details["kept"].append(f"{run.name}: {why}")
        details["kept_ids"].append(str(run.id))
        audit.note(f"{run.name} ({run.state.name}): {why}")
        return
    if dry:
        audit.note(
            f"dry run: would cancel {run.name} ({run.state.name})"
            + (f" and resubmit it on {backup.work_pool}" if target else f" ({why})")
        )
        details["cancelled"].append(run.name)
        return
    client.set_flow_run_state(
        run.id,
        Cancelled(
            message=(
                f"planflow failover: work pool {pool} is unhealthy ({alert.alertname}); "
                + (f"resubmitted on {backup.work_pool}" if target else why)
            )
        ),
        force=True,
    )
    audit.note(f"cancelled {run.name} ({run.state.name}) on {pool}" + ("" if target else f": {why}"))
    audit.emit("action", what="cancel-flow-run", flow_run_id=str(run.id))
    details["cancelled"].append(run.name)
    if target is None:
        return
    if flow_name not in details["replans"]:
        details["replans"][flow_name] = replan_on_backup(flow_name, backup_name, backup)
    parameters = dict(run.parameters or {})
    properties = (target.parameter_openapi_schema or {}).get("properties") or {}
    if "local_pool" in properties or (not properties and "planflow" in run.tags):
        parameters["local_pool"] = backup_name  # plan with the backup pool's capacities
    due = run.expected_start_time
    later = due is not None and due > dt.datetime.now(dt.UTC)  # a scheduled run not due yet keeps its time
    new = client.create_flow_run_from_deployment(
        target.id,
        parameters=parameters,
        state=Scheduled(scheduled_time=due) if later else None,
        # one resubmission per run, however many failovers and checks move it at once
        idempotency_key=f"planflow-failover-{run.id}",
        job_variables=_backup_job_variables(client, backup),
        tags=[*(t for t in run.tags if t not in ("docker", "kubernetes")), "failover"],
        name=f"{run.name}-failover",
    )
    audit.affected.append(str(new.id))
    details["resubmitted"].append(
        {
            "from": run.name,
            "flow_run_id": str(new.id),
            "deployment": f"{flow_name}/{target.name}",
            "work_pool": backup.work_pool,
        }
    )
    audit.note(
        f"resubmitted {run.name} as {new.name} ({flow_name}/{target.name}) on "
        f"{backup.work_pool}, planned with pool '{backup_name}' "
        f"({details['replans'][flow_name].get('makespan_s', '?')} s makespan)"
    )
    audit.emit(
        "action", what="resubmit", from_flow_run_id=str(run.id), flow_run_id=str(new.id), work_pool=backup.work_pool
    )


def _equivalent_deployment(client: SyncPrefectClient, flow_id: Any, work_pool: str) -> DeploymentResponse | None:
    """A deployment of the same flow on `work_pool` (the first by name), or None."""
    found = client.read_deployments(
        flow_filter=FlowFilter(id=FlowFilterId(any_=[flow_id])),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[work_pool])),
        deployment_filter=DeploymentFilter(),
        limit=10,
    )
    return sorted(found, key=lambda d: d.name)[0] if found else None


def _backup_job_variables(client: SyncPrefectClient, backup: ResourcePool) -> dict[str, Any]:
    """Job variables sized to the backup pool (e.g. a Kubernetes pod's requests)."""
    try:
        kind = client.read_work_pool(backup.work_pool).type
        return job_variables(kind, cpu=backup.cpu, gpu=backup.gpu, mem_gib=backup.mem_gib, gpu_pool=backup.gpu > 0)
    except Exception:  # noqa: BLE001 - plain job variables are still a valid resubmission
        return {}
