"""The retry remediation: a failed or crashed pipeline flow run runs again.

Prefect's own `prefect.flow-run.Failed|Crashed` event of a run tagged `planflow` starts
`planflow-retry-run/remediation`. The run (from a deployment) is set back to Scheduled
("AwaitingRetry", after the route's backoff) so that a worker runs the SAME flow run
again: its components' cache keys are scoped to the flow run id, so the components that
finished are read back (state Cached), not recomputed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType
from prefect.states import AwaitingRetry

from planflow.prefect.blocks.alert_route import FLOW_RUN_FAILED, AlertRoute, load_route
from planflow.remediation.alert import AlertEvent
from planflow.remediation.audit import Audit, audited
from planflow.remediation.guard import Guard, guard_lock
from planflow.remediation.names import RETRY_FLOW, is_remediation_run


def backoff_seconds(route: AlertRoute, attempt: int) -> float:
    """The wait before retry number `attempt`: backoff * factor^(attempt-1)."""
    return float(route.backoff_seconds * route.backoff_factor ** max(0, attempt - 1))


RETRY_MESSAGE = "planflow retry "  # how the AwaitingRetry states this flow sets begin


def retry_since_last_run(states: list[State]) -> State | None:
    """The AwaitingRetry this flow set after the run last ran, if any: then the crash or
    failure reported now is one already retried. A process killed with SIGKILL is reported
    Crashed twice, by the runner ("Process exited with status code: -9") and, seconds
    later, by the worker ("Flow run infrastructure exited ..."), the second over the
    AwaitingRetry the first one's retry had set; each used up an attempt."""
    found = None
    for state in sorted(states, key=lambda s: s.timestamp):
        if state.type == StateType.RUNNING:
            found = None
        elif state.name == "AwaitingRetry" and (state.message or "").startswith(RETRY_MESSAGE):
            found = state
    return found


Outcome = tuple[str, str, dict[str, Any] | None]  # (outcome, reason, details) for Audit.finish


def _set_again(client: Any, audit: Audit, run: Any, state: State, earlier: State) -> Outcome:
    """Set the AwaitingRetry a second report of the same crash replaced, as it was (due
    then, or now if that has passed), counting no attempt."""
    due = earlier.state_details.scheduled_time or dt.datetime.now(dt.UTC)
    when = max(due, dt.datetime.now(dt.UTC))
    client.set_flow_run_state(
        run.id, AwaitingRetry(scheduled_time=when, message=earlier.message or RETRY_MESSAGE), force=True
    )
    reason = (
        f"{run.name} was reported {state.name} again after planflow had set it to AwaitingRetry for the same "
        "attempt (a second report of one crash): AwaitingRetry set again, no attempt counted"
    )
    audit.note(reason)
    audit.emit("action", what="set-state", state="AwaitingRetry", flow_run_id=str(run.id), duplicate=True)
    return (
        "succeeded",
        reason,
        {"flow_run": run.name, "was": state.name, "duplicate": True, "scheduled_for": when.isoformat()},
    )


def _retry_once(client: Any, audit: Audit, route: AlertRoute, run_id: str) -> dict[str, Any]:
    """The check that this crash was not retried already, and the retry, under the guard's
    lock: a SIGKILL is reported Crashed twice, 4 s apart, and the two retries ran side by
    side, each seeing no AwaitingRetry yet, each counting an attempt. The run is read again
    under the lock: a retry beside this one may have set it AwaitingRetry meanwhile. The
    outcome is written down after the lock is given back: writing it counts it on the
    Pushgateway under the same lock (audit.push_remediation_count), which a holder waited
    30 s for."""
    guard = Guard(route)
    with guard_lock(guard.lock_timeout):
        outcome, reason, details = _decide_and_retry(client, audit, guard, run_id)
    return audit.finish(outcome, reason, details, route)


def _decide_and_retry(client: Any, audit: Audit, guard: Guard, run_id: str) -> Outcome:
    """Under the guard's lock: whether to retry the run, and the retry when it is one."""
    route = guard.route
    run = client.read_flow_run(run_id)
    state = run.state
    if state is None or state.type.value not in ("FAILED", "CRASHED"):
        return "skipped", f"flow run {run.name} is {state.name if state else '-'} now: already retried", None
    earlier = retry_since_last_run(client.read_flow_run_states(run_id))
    if earlier is not None:
        return _set_again(client, audit, run, state, earlier)
    decision = guard.admit_held(f"retry:{run_id}", extra={"flow_run": run.name})
    details = {"flow_run": run.name, "was": state.name, "attempt": decision.attempt, "decision": decision.outcome}
    if not decision.counted:
        audit.note(f"not retried: {decision.reason}")
        return decision.audit_outcome, decision.reason, details
    delay = backoff_seconds(route, decision.attempt)
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
    details.update(backoff_seconds=delay, scheduled_for=when.isoformat())
    if decision.outcome == "dry_run":
        audit.note(f"dry run: would set {run.name} ({state.name}) to AwaitingRetry in {delay:g} s")
        return "dry_run", decision.reason, details
    client.set_flow_run_state(
        run_id,
        AwaitingRetry(
            scheduled_time=when,
            message=(
                f"{RETRY_MESSAGE}{decision.attempt}/{route.max_attempts} after {state.name}: "
                f"{(state.message or '')[:200]}"
            ),
        ),
        force=True,
    )
    audit.note(
        f"set {run.name} from {state.name} to AwaitingRetry, due in {delay:g} s "
        f"(attempt {decision.attempt} of {route.max_attempts}); a worker of its pool runs "
        "the same flow run again, finished components come back Cached"
    )
    audit.emit("action", what="set-state", state="AwaitingRetry", flow_run_id=run_id, backoff_seconds=delay)
    return "succeeded", decision.reason, details


@flow(name=RETRY_FLOW, log_prints=True, retries=0)
@audited
def retry_run(alert: AlertEvent) -> dict[str, Any]:
    """Run a failed or crashed pipeline flow run again, the same flow run, after a backoff;
    finished components are read back from their persisted results."""
    run_id = alert.flow_run_id
    route = load_route(FLOW_RUN_FAILED)
    audit = Audit("retry", FLOW_RUN_FAILED, run_id, alert)
    if run_id:
        audit.affected.append(run_id)
    audit.emit("started", flow_run_id=run_id, trigger=alert.event)
    if not run_id:
        return audit.finish("skipped", f"no flow run id in {alert.resource_id!r}", route=route)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        state = run.state
        kind = state.type.value if state else "UNKNOWN"
        if state is None or kind not in ("FAILED", "CRASHED"):
            return audit.finish(
                "skipped",
                f"flow run {run.name} is {state.name if state else '-'} now, "
                "not failed or crashed (already retried, or a duplicate event)",
                route=route,
            )
        if "component" in run.tags or is_remediation_run(run.work_pool_name, run.tags):
            return audit.finish(
                "skipped",
                f"flow run {run.name} is a component or remediation run: its parent pipeline run is the one retried",
                route=route,
            )
        if run.deployment_id is None:
            return audit.finish(
                "skipped",
                f"flow run {run.name} was not started from a deployment: no worker can run it again",
                route=route,
            )
        return _retry_once(client, audit, route, run_id)
