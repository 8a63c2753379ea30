"""planflow's Prefect automations, declared as code and applied idempotently.

    planflow automations apply     # create / update / keep, matched by name; prints one line each
    planflow automations ls        # the planflow automations on the server
    planflow automations rm [NAME] # delete one, or all of planflow's

What there is (names start with "planflow: "):

- **retry failed or crashed runs**: Prefect's own `prefect.flow-run.Failed` / `.Crashed`
  of a flow run tagged `planflow` -> run `planflow-retry-run/remediation` (the same flow
  run back to AwaitingRetry).
- **failover on unhealthy pool**: `planflow.alert.firing` / `.resolved` about
  `prefect.work-pool.*` whose alert's AlertRoute says failover (PlanflowWorkPoolNotReady,
  PlanflowWorkerHeartbeatStale, PlanflowPoolFailureRateHigh) -> run
  `planflow-failover/remediation`; never about `planflow-remediation` itself.
- **rescale on late-run backlog**: the same events for alerts routed to rescale
  (PlanflowLateRunBacklog) -> run `planflow-rescale/remediation`; the same exclusion.

**Never its own target.** The remediation machinery (pool and tag `planflow-remediation`,
the remediation deployments and their runs) is excluded from every automation: the alert
triggers do not match its pool (`pool_alert_match`), the retry and crash triggers match
only runs tagged `planflow`, which remediation runs never are; and each remediation flow
refuses it again (outcome "skipped", saying why). Otherwise failed remediations raise the
remediation pool's failure rate, and the failover pauses the pool that runs it.
- **crash silent runs**, proactive: a `planflow` flow run's `prefect.flow-run.heartbeat`
  not followed by another heartbeat or a final state within 3 heartbeat periods ->
  change that flow run's state to Crashed (the retry automation then answers).

Each RunDeployment action passes one parameter, `alert` (remediation/alert.py: an
`AlertEvent`), whose fields Prefect renders from the triggering event.

Prefect 3 flow runs send a heartbeat every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds
(180 by default, 30 at least), so a run whose process died silently is found after 9
minutes by default; set the frequency to 30 on the workers (and where `apply` runs) for
90 s, or `PLANFLOW_CRASH_AFTER_SECONDS` directly (see `crash_after_seconds`).

**Why in code, and not as `triggers:` in deployments/prefect.yaml.** A prefect.yaml
trigger belongs to one deployment and can only run that deployment; planflow's
automations are cross-cutting: one automation answers the failures of every pipeline
deployment on every pool, and one changes a flow run's state without any deployment.
Which alerts lead to which action is configuration (the AlertRoute blocks, editable in
the UI), so the triggers' alert-name lists are computed from the blocks when applied,
and re-applying after editing a route updates them without redeploying anything. The
remediation deployments they run are created here too (their ids are resolved at apply
time), on their own process pool `planflow-remediation`, so that pausing a pipeline pool
never stops its own remediation. Metric triggers are not used: the open-source server
refuses them; Prometheus evaluates the thresholds and the bridge turns alerts into events.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, RunDeployment
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.exceptions import ObjectNotFound
from prefect.utilities.callables import parameter_schema

from planflow.prefect.blocks.alert_route import FLOW_RUN_FAILED, AlertRoute, ensure_routes, load_routes
from planflow.prefect.heartbeats import flow_heartbeat_seconds
from planflow.prefect.jobvars import load_template
from planflow.prefect.workpools import WorkPoolError, require_server
from planflow.remediation.alert import ALERT_TEMPLATE, EVENT_TEMPLATE, run_parameters
from planflow.remediation.flows import REMEDIATION_FLOWS
from planflow.remediation.guard import ensure_lock
from planflow.remediation.names import (
    DEPLOYMENT_NAME,
    FAILOVER_FLOW,
    REMEDIATION_POOL,
    REMEDIATION_TAG,
    RESCALE_FLOW,
    RETRY_FLOW,
)
from planflow.remediation.worker_process import (  # callers find the worker here too
    start_remediation_worker,
    stop_process,
    worker_down,
    worker_pid,
    worker_up,
)

__all__ = [
    "NAMES",
    "PREFIX",
    "REMEDIATION_POOL",
    "AutomationsError",
    "apply",
    "desired_automations",
    "remove",
    "start_remediation_worker",
    "stop_process",
    "worker_down",
    "worker_pid",
    "worker_up",
]
PREFIX = "planflow: "
# flow name -> entrypoint: import paths into the installed package, so the remediation
# worker runs them wherever planflow is installed, whatever the project's folder.
REMEDIATION_DEPLOYMENTS = {
    RETRY_FLOW: "planflow.remediation.retry:retry_run",
    FAILOVER_FLOW: "planflow.remediation.failover:failover",
    RESCALE_FLOW: "planflow.remediation.rescale:rescale",
}
FLOW_FOR_ACTION = {"retry": RETRY_FLOW, "failover": FAILOVER_FLOW, "rescale": RESCALE_FLOW}
NAMES = {
    "retry": PREFIX + "retry failed or crashed runs",
    "failover": PREFIX + "failover on unhealthy pool",
    "rescale": PREFIX + "rescale on late-run backlog",
    "crash": PREFIX + "crash silent runs",
}
# The automations that answer planflow.alert.* events (the others answer Prefect's own).
ALERT_ACTIONS = ("failover", "rescale")


class AutomationsError(RuntimeError):
    """The automations cannot be applied; the message says what to run."""


# -- what the remediation flows run on --------------------------------------------------
def ensure_remediation_pool() -> str:
    """The process work pool that runs the remediation flows (created when missing)."""
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(REMEDIATION_POOL)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=REMEDIATION_POOL,
                    type="process",
                    base_job_template=load_template("process"),
                    description="Runs planflow's remediation flows (retry, failover, rescale).",
                )
            )
            return f"{REMEDIATION_POOL}: created"
        if pool.is_paused:
            client.update_work_pool(REMEDIATION_POOL, WorkPoolUpdate(is_paused=False))
            return f"{REMEDIATION_POOL}: resumed"
        return f"{REMEDIATION_POOL}: unchanged"


def ensure_deployments() -> dict[str, Any]:
    """Create or update the remediation deployments (`<flow>/remediation`) on the
    remediation pool, running planflow's installed code. Returns flow name -> deployment id."""
    flows = {flow.name: flow for flow in REMEDIATION_FLOWS.values()}
    ids = {}
    with get_client(sync_client=True) as client:
        for flow_name, entrypoint in REMEDIATION_DEPLOYMENTS.items():
            flow_id = client.create_flow_from_name(flow_name)
            ids[flow_name] = client.create_deployment(
                flow_id=flow_id,
                name=DEPLOYMENT_NAME,
                entrypoint=entrypoint,
                work_pool_name=REMEDIATION_POOL,
                tags=[REMEDIATION_TAG],
                description=f"planflow remediation: {flow_name} (started by planflow's automations)",
                parameter_openapi_schema=parameter_schema(flows[flow_name].fn).model_dump_for_openapi(),
                enforce_parameter_schema=False,
                job_variables={},
            )
    return ids


# -- the automations --------------------------------------------------------------------
def _start_flow(
    name: str, description: str, trigger: EventTrigger, deployment_id: Any, template: dict[str, Any]
) -> Automation:
    """An automation that starts a remediation flow's deployment with the event that
    triggered it (`template`: how the flow's `alert` parameter is filled from it)."""
    return Automation(
        name=name,
        description=description,
        trigger=trigger,
        actions=[RunDeployment(source="selected", deployment_id=deployment_id, parameters=run_parameters(template))],
    )


def desired_automations(deployment_ids: dict[str, Any], routes: dict[str, AlertRoute] | None = None) -> list[Any]:
    """Every automation planflow needs, built from the AlertRoute blocks (or defaults)."""
    routes = routes if routes is not None else load_routes()
    out = []
    if routes.get(FLOW_RUN_FAILED) is None or routes[FLOW_RUN_FAILED].action != "none":
        out.append(
            _start_flow(
                NAMES["retry"],
                "A failed or crashed planflow flow run is run again (the same flow run, "
                "finished components cached), within its AlertRoute's attempt cap and backoff.",
                EventTrigger(
                    expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                    match={"prefect.resource.id": "prefect.flow-run.*"},
                    match_related={"prefect.resource.id": "prefect.tag.planflow", "prefect.resource.role": "tag"},
                    posture=Posture.Reactive,
                    threshold=1,
                    within=timedelta(0),
                ),
                deployment_ids[RETRY_FLOW],
                EVENT_TEMPLATE,
            )
        )
    for action in ALERT_ACTIONS:
        alerts = sorted(name for name, route in routes.items() if route.action == action)
        if not alerts:
            continue
        out.append(
            _start_flow(
                NAMES[action],
                f"planflow.alert.firing/resolved of {', '.join(alerts)} (their AlertRoute "
                f"blocks say {action}) start the {action} remediation flow; never for the "
                f"remediation pool {REMEDIATION_POOL} itself.",
                EventTrigger(
                    expect={"planflow.alert.firing", "planflow.alert.resolved"},
                    match=pool_alert_match(alerts),
                    posture=Posture.Reactive,
                    threshold=1,
                    within=timedelta(0),
                ),
                deployment_ids[FLOW_FOR_ACTION[action]],
                ALERT_TEMPLATE,
            )
        )
    window = crash_after_seconds()
    out.append(
        Automation(
            name=NAMES["crash"],
            description=f"A planflow flow run that stopped sending heartbeats for {window:g} s without "
            "reaching a final state is marked Crashed (the retry automation then answers).",
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={
                    "prefect.flow-run.heartbeat",
                    "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed",
                },
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.id": "prefect.tag.planflow", "prefect.resource.role": "tag"},
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=window),
            ),
            actions=[
                ChangeFlowRunState(
                    state=StateType.CRASHED, message=f"planflow: no heartbeat for {window:g} s; marked Crashed"
                )
            ],
        )
    )
    return out


def pool_alert_match(alerts: list[str]) -> dict[str, Any]:
    """The `match` of an alert-driven automation: a bridge event about a work pool, of one
    of `alerts`, and not about the remediation pool. The labels of one spec must all match
    (a list under one label matches if any item does, so the exclusion sits on the name:
    the bridge names a pool resource by the pool). An event without that name does not
    match at all, so no remediation run is even created for the remediation machinery."""
    return {
        "prefect.resource.id": "prefect.work-pool.*",
        "prefect.resource.name": f"!{REMEDIATION_POOL}",
        "planflow.alert.name": alerts,
    }


CRASH_AFTER_ENV = "PLANFLOW_CRASH_AFTER_SECONDS"


def crash_after_seconds() -> float:
    """How long without a heartbeat before a running planflow flow run counts as crashed:
    PLANFLOW_CRASH_AFTER_SECONDS, else 3 heartbeats of Prefect's flow heartbeat frequency
    (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, 180 s by default: 9 minutes; set it to 30 on the
    workers and here for 90 s). Never shorter than 1.5 heartbeats, which would crash
    healthy runs between two heartbeats."""
    frequency = flow_heartbeat_seconds()
    explicit = os.environ.get(CRASH_AFTER_ENV, "").strip()
    if explicit:
        try:
            value = float(explicit)
        except ValueError:
            raise AutomationsError(
                f"{CRASH_AFTER_ENV}={explicit!r} is not a number of seconds; unset it or give e.g. {3 * frequency:g}"
            ) from None
        if value < 1.5 * frequency:
            raise AutomationsError(
                f"{CRASH_AFTER_ENV}={value:g} is shorter than 1.5 heartbeats ({frequency:g} s each, "
                "PREFECT_FLOWS_HEARTBEAT_FREQUENCY): healthy runs would be marked Crashed between two "
                f"heartbeats. Set it to at least {1.5 * frequency:g}, or lower the heartbeat frequency."
            )
        return value
    return 3 * frequency


def _spec(automation: Any) -> dict[str, Any]:
    """What decides whether a stored automation equals the desired one."""
    data = automation.model_dump(mode="json", exclude={"id", "owner_resource", "tags"})
    trigger = data.get("trigger") or {}
    trigger.pop("id", None)
    for key in ("expect", "after", "for_each"):
        if key in trigger and isinstance(trigger[key], list):
            trigger[key] = sorted(trigger[key])
    return data


def planflow_automations() -> list[Any]:
    with get_client(sync_client=True) as client:
        return sorted((a for a in client.read_automations() if a.name.startswith(PREFIX)), key=lambda a: a.name)


def apply(routes: dict[str, AlertRoute] | None = None) -> list[str]:
    """Create, update or keep every planflow automation, matched by name (duplicates of a
    name are removed, stale planflow automations deleted). Also ensures the AlertRoute
    blocks, the remediation pool and deployments, and the guard's concurrency limit.
    Returns one line per thing done."""
    try:
        require_server()
    except WorkPoolError as exc:
        raise AutomationsError(str(exc)) from exc
    done = [f"AlertRoute '{name}': {'created' if created else 'kept'}" for name, created in ensure_routes().items()]
    ensure_lock()
    done.append(ensure_remediation_pool())
    ids = ensure_deployments()
    done += [f"deployment {name}/{DEPLOYMENT_NAME}: applied" for name in ids]
    wanted = desired_automations(ids, routes)
    existing: dict[str, list[Any]] = {}
    for automation in planflow_automations():
        existing.setdefault(automation.name, []).append(automation)
    with get_client(sync_client=True) as client:
        for automation in wanted:
            found = existing.pop(automation.name, [])
            for extra in found[1:]:
                client.delete_automation(extra.id)
            if not found:
                automation.create()
                done.append(f"{automation.name}: created")
            elif _spec(found[0]) != _spec(automation):
                client.update_automation(found[0].id, automation)
                done.append(f"{automation.name}: updated")
            else:
                done.append(f"{automation.name}: unchanged")
        for name, stale in existing.items():  # a planflow automation no longer wanted
            for automation in stale:
                client.delete_automation(automation.id)
            done.append(f"{name}: deleted (no longer wanted)")
    return done


def remove(name: str | None = None) -> list[str]:
    """Delete one planflow automation (by full name or the part after "planflow: "), or all."""
    removed = []
    with get_client(sync_client=True) as client:
        for automation in planflow_automations():
            if name is None or automation.name in (name, PREFIX + name):
                client.delete_automation(automation.id)
                removed.append(automation.name)
    return removed
