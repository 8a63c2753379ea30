"""The OOM retry remediation: whether a component killed for memory runs again now.

The distributed executor (planflow.runtime.distributed) asks this gate before each run
again with more memory (planflow.runtime.oom_gate; registered by planflow's entry point
`planflow.hooks:oom_gate`). It is bounded like every remediation, by the AlertRoute
`component-oom-killed` through the guard (guard.py): attempts per component and pipeline
run, cooldown, a rate limit over all runs (so a storm of OOM kills is cut off), dry
run; action `none` turns it off. Each decision is audited (audit.py): events
`planflow.remediation.started|action|outcome`, `planflow_remediations_total{action="oom-retry",
outcome}`, and the markdown artifact `remediation-oom-retry` on the pipeline's flow run.
"""

from __future__ import annotations

from planflow.prefect.blocks.alert_route import COMPONENT_OOM_KILLED, load_route
from planflow.remediation.audit import Audit, audited
from planflow.remediation.guard import Guard
from planflow.runtime.oom_gate import GateAnswer, OomRetry

ACTION = "oom-retry"


def guard_key(request: OomRetry) -> str:
    """The guard's target: one component in one pipeline run."""
    return f"{ACTION}:{request.parent_run_id or '-'}:{request.pipeline}.{request.step}"


@audited
def admit_oom_retry(request: OomRetry) -> GateAnswer:
    """Admit (or refuse) one run again with more memory, and write it down."""
    route = load_route(COMPONENT_OOM_KILLED)
    audit = Audit(ACTION, COMPONENT_OOM_KILLED, f"{request.pipeline}.{request.step}")
    audit.affected += [r for r in (request.killed_run_id, request.parent_run_id) if r]
    audit.work_pools += list(dict.fromkeys([request.pool, request.to_pool]))
    audit.emit("started", component=request.step, pipeline=request.pipeline, where=request.where)
    decision = Guard(route).admit(guard_key(request), extra={"component": request.step})
    details = {
        "component": request.step,
        "pipeline": request.pipeline,
        "killed": request.where,
        "was_gib": request.was_gib,
        "now_gib": request.now_gib,
        "pool": request.pool,
        "to_pool": request.to_pool,
        "retry": request.retry,
        "attempt": decision.attempt,
        "decision": decision.outcome,
    }
    if not decision.act:
        audit.note(f"{request.step} not run again with {request.now_gib:.3g} GiB: {decision.reason}")
        audit.finish(decision.audit_outcome, decision.reason, details, route)
        return GateAnswer(False, decision.outcome, decision.reason)
    audit.note(
        f"{request.step} killed for memory at {request.was_gib:.3g} GiB on pool '{request.pool}' "
        f"({request.where}); runs again with {request.now_gib:.3g} GiB on pool '{request.to_pool}'"
    )
    audit.emit("action", what="run-again", mem_gib=request.now_gib, to_pool=request.to_pool, retry=request.retry)
    audit.finish("succeeded", decision.reason, details, route)
    return GateAnswer(True, decision.outcome, decision.reason)
