"""AlertRoute: which remediation answers an alert, and the bounds it acts within.

One block document per alert (document name: the alert name in kebab case, e.g.
`planflow-work-pool-not-ready`; `flow-run-failed` stands for Prefect's own
`prefect.flow-run.Failed|Crashed` events, `component-oom-killed` a component's run again
with more memory after an OOM kill, action retry or none). Users edit them in the Prefect UI:

| field | meaning |
|---|---|
| action | retry, failover, rescale or none (the automation still fires, the flow only records) |
| max_attempts | actions per target (flow run, work pool) until the alert resolves |
| cooldown_seconds | no second action on the same target within this time |
| rate_limit | at most this many actions of this route per minute, all targets together |
| dry_run | decide and record what would be done, change nothing |
| backoff_seconds, backoff_factor | retry: wait backoff * factor^(attempt-1) before the retry |
| min_workers, max_workers, max_concurrency | rescale: the bounds |
| kubernetes_namespace, kubernetes_worker_deployment | rescale on a Kubernetes pool: the worker Deployment to scale |
| kubernetes_credentials | rescale on a Kubernetes pool: a KubernetesCredentials block (prefect-kubernetes) |

This module only holds the configuration. The guard that enforces it (the durable
attempt ledger, cooldown, rate limit, dry run) is `planflow.remediation.guard`.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from pydantic import Field

# The route that answers Prefect's own failed/crashed flow run events.
FLOW_RUN_FAILED = "FlowRunFailed"
# The route that bounds a component run again with more memory after an OOM kill
# (planflow.remediation.oom_retry; the executor asks it before each run again).
COMPONENT_OOM_KILLED = "ComponentOomKilled"


class AlertRoute(Block):
    """Alert -> remediation action, with attempt caps, cooldown, rate limit and dry run."""

    _block_type_name: ClassVar[str] = "planflow Alert Route"
    _block_type_slug: ClassVar[str] = "planflow-alert-route"
    _description: ClassVar[str] = (
        "Which remediation (retry, failover, rescale, none) answers one alert, and its "
        "guardrails: attempt cap, cooldown, rate limit, dry run."
    )

    alertname: str = Field(
        description="The Prometheus alert name (or FlowRunFailed for Prefect's failed/crashed flow run events)."
    )
    action: Literal["retry", "failover", "rescale", "none"] = Field(
        default="none", description="What the remediation flow does about it."
    )
    max_attempts: int = Field(default=3, ge=0, description="Actions per target until resolved.")
    cooldown_seconds: float = Field(default=30.0, ge=0, description="No second action on one target within this time.")
    rate_limit: int = Field(default=6, ge=0, description="Actions of this route per minute, at most.")
    dry_run: bool = Field(default=False, description="Record what would be done; change nothing.")
    backoff_seconds: float = Field(default=2.0, ge=0, description="retry: base delay before a retry.")
    backoff_factor: float = Field(default=2.0, ge=1, description="retry: delay multiplier per attempt.")
    min_workers: int = Field(default=1, ge=0, description="rescale: fewest workers per pool.")
    max_workers: int = Field(default=3, ge=1, description="rescale: most workers per pool.")
    max_concurrency: int | None = Field(
        default=8, ge=1, description="rescale: highest pool/queue concurrency limit to set."
    )
    kubernetes_namespace: str = Field(
        default="planflow", description="rescale, Kubernetes pools: the namespace of the worker Deployment."
    )
    kubernetes_worker_deployment: str = Field(
        default="prefect-worker",
        description="rescale, Kubernetes pools: the worker Deployment whose "
        "replicas are the pool's workers (the prefect-worker chart's).",
    )
    kubernetes_credentials: str = Field(
        default="",
        description="rescale, Kubernetes pools: the name of a KubernetesCredentials block "
        "(prefect-kubernetes); empty: the Pod's ServiceAccount inside a cluster, else KUBECONFIG.",
    )


def route_name(alertname: str) -> str:
    """The block document name of an alert's route: PlanflowWorkPoolNotReady ->
    planflow-work-pool-not-ready."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", alertname).lower().replace("_", "-")


DEFAULT_ROUTES: dict[str, dict[str, Any]] = {
    FLOW_RUN_FAILED: dict(action="retry", max_attempts=2, cooldown_seconds=0, rate_limit=10),
    "PlanflowWorkPoolNotReady": dict(action="failover", max_attempts=1, cooldown_seconds=60),
    "PlanflowWorkerHeartbeatStale": dict(action="failover", max_attempts=1, cooldown_seconds=60),
    "PlanflowPoolFailureRateHigh": dict(action="failover", max_attempts=1, cooldown_seconds=60),
    "PlanflowLateRunBacklog": dict(
        action="rescale", max_attempts=3, cooldown_seconds=20, min_workers=1, max_workers=3, max_concurrency=8
    ),
    COMPONENT_OOM_KILLED: dict(action="retry", max_attempts=3, cooldown_seconds=0, rate_limit=6),
    "PlanflowPipelineRunFailed": dict(action="none"),  # the retry answers Prefect's own event
}


def default_route(alertname: str) -> AlertRoute:
    return AlertRoute(alertname=alertname, **DEFAULT_ROUTES.get(alertname, {"action": "none"}))


def ensure_routes() -> dict[str, bool]:
    """Register the block type and create the default routes that are missing (a route
    a user edited is kept). Returns document name -> created."""
    AlertRoute.register_type_and_schema()
    created = {}
    for alertname in DEFAULT_ROUTES:
        name = route_name(alertname)
        try:
            AlertRoute.load(name)
            created[name] = False
        except ValueError:
            default_route(alertname).save(name)
            created[name] = True
    return created


def load_route(alertname: str) -> AlertRoute:
    """The alert's route block, else its default (never raises for a missing block)."""
    try:
        return AlertRoute.load(route_name(alertname))
    except ValueError:
        return default_route(alertname)


def load_routes() -> dict[str, AlertRoute]:
    """Every route: the saved documents over the defaults, by alert name."""
    routes = {name: default_route(name) for name in DEFAULT_ROUTES}
    with get_client(sync_client=True) as client:
        try:
            documents = client.read_block_documents_by_type(AlertRoute.get_block_type_slug())
        except ObjectNotFound:
            documents = []
    for doc in documents:
        route = AlertRoute._from_block_document(doc)
        routes[route.alertname] = route
    return routes
