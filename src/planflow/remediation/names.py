"""Names the remediation modules share: the remediation flows, their deployments, pool
and tag. The flow names are part of planflow's interface (automations, dashboards and
users' filters find the runs by them)."""

from __future__ import annotations

REMEDIATION_POOL = "planflow-remediation"
REMEDIATION_TAG = "planflow-remediation"
DEPLOYMENT_NAME = "remediation"

RETRY_FLOW = "planflow-retry-run"
FAILOVER_FLOW = "planflow-failover"
RESCALE_FLOW = "planflow-rescale"


def deployment_of(flow_name: str) -> str:
    """`<flow>/<deployment>` of a remediation flow, e.g. planflow-failover/remediation."""
    return f"{flow_name}/{DEPLOYMENT_NAME}"
