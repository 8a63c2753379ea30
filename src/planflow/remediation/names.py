"""Names the remediation modules share: the remediation flows, their deployments, pool
and tag. The flow names are part of planflow's interface (automations, dashboards and
users' filters find the runs by them); they are declared in planflow.prefect.reserved,
where the exporter reads them too."""

from __future__ import annotations

from planflow.prefect.reserved import (
    FAILOVER_FLOW,
    REMEDIATION_FLOW_NAMES,
    REMEDIATION_POOL,
    REMEDIATION_TAG,
    RESCALE_FLOW,
    RETRY_FLOW,
    is_remediation_run,
)

__all__ = [
    "DEPLOYMENT_NAME",
    "FAILOVER_FLOW",
    "REMEDIATION_FLOW_NAMES",
    "REMEDIATION_POOL",
    "REMEDIATION_TAG",
    "RESCALE_FLOW",
    "RETRY_FLOW",
    "deployment_of",
    "is_remediation_run",
]

DEPLOYMENT_NAME = "remediation"


def deployment_of(flow_name: str) -> str:
    """`<flow>/<deployment>` of a remediation flow, e.g. planflow-failover/remediation."""
    return f"{flow_name}/{DEPLOYMENT_NAME}"
