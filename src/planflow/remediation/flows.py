"""The remediation flows by action, as the automations and the remediation worker know
them."""

from __future__ import annotations

from prefect import Flow

from planflow.remediation.failover import failover
from planflow.remediation.rescale import rescale
from planflow.remediation.retry import retry_run

REMEDIATION_FLOWS: dict[str, Flow] = {"retry": retry_run, "failover": failover, "rescale": rescale}
