"""Names planflow reserves on the Prefect server for its remediation machinery: the
work pool, tag and flows of the remediation flows (retry, failover, rescale).

They live down here, below monitoring and remediation, because both need them: the
exporter counts the machinery's runs apart (a failing remediation must never feed a
pool's failure rate), and every remediation refuses to act on the machinery itself.
"""

from __future__ import annotations

REMEDIATION_POOL = "planflow-remediation"
REMEDIATION_TAG = "planflow-remediation"

RETRY_FLOW = "planflow-retry-run"
FAILOVER_FLOW = "planflow-failover"
RESCALE_FLOW = "planflow-rescale"
REMEDIATION_FLOW_NAMES = (RETRY_FLOW, FAILOVER_FLOW, RESCALE_FLOW)
# The flow that runs one component of a distributed run on a work pool: its failure is
# the parent pipeline run's to report (an OOM kill its memory retry answers pages nobody).
COMPONENT_FLOW = "run-component"
# The tag the parent run gives such a child when it was killed for memory and is run again
# with more: the exporter counts it in the state `oom_killed`, never as a crash of its work
# pool (the failover paused a pool for a component's memory, SRE trial 2026-12-07).
OOM_KILLED_TAG = "planflow:oom-killed"


def is_remediation_run(work_pool_name: str | None, tags: list[str] | tuple[str, ...] | None) -> bool:
    """A flow run of the remediation machinery: on its pool, or tagged as one."""
    return work_pool_name == REMEDIATION_POOL or REMEDIATION_TAG in (tags or ())
