"""AlertRoute: which remediation answers an alert, and the guardrails that bound it.

One block document per alert (document name: the alert name in kebab case, e.g.
`planflow-work-pool-not-ready`; `flow-run-failed` stands for Prefect's own
`prefect.flow-run.Failed|Crashed` events). Users edit them in the Prefect UI:

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

**Where the attempts are counted, and why there.** A storm of the same alert (the
bridge turns Alertmanager's duplicates into one event, but a flapping rule or many
failed runs make many events) starts many remediation flow runs, in separate
processes, possibly on several machines. Their only shared, durable store is the
Prefect server, so the guard keeps its ledger in Prefect Variables (one per target,
`planflow_guard_<hash>`, plus one per route for the rate window) and serialises the
read-check-write with a Prefect global concurrency limit of 1
(`planflow-remediation-guard`): a lease held on the server, released even if the
holder dies (lease expiry). A restarted server, worker or flow keeps the count;
`planflow automations apply` does not reset it; a resolved alert does (failover,
rescale), and `Guard.reset` does by hand. Dry-run decisions go to a separate ledger
(`..._dry`), so a dry run shows the same bounded set of "would do" records without
using up the real attempts.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from prefect.blocks.core import Block
from pydantic import Field

GUARD_LIMIT = "planflow-remediation-guard"
_ENSURE = threading.Lock()
RATE_WINDOW_SECONDS = 60.0
# The route that answers Prefect's own failed/crashed flow run events.
FLOW_RUN_FAILED = "FlowRunFailed"


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

    def backoff(self, attempt: int) -> float:
        return float(self.backoff_seconds * self.backoff_factor ** max(0, attempt - 1))


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
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

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


# -- the guard ------------------------------------------------------------------------
@dataclass
class Decision:
    """What the guard allows: `outcome` is "act", "dry_run", "max_attempts",
    "cooldown", "rate_limited" or "no_action"."""

    outcome: str
    reason: str
    attempt: int = 0
    ledger: dict[str, Any] = field(default_factory=dict)

    @property
    def act(self) -> bool:
        return self.outcome == "act"

    @property
    def counted(self) -> bool:  # an action that happened, or would have (dry run)
        return self.outcome in ("act", "dry_run")


def _variable_name(kind: str, key: str, dry: bool) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return f"planflow_{kind}_{digest}" + ("_dry" if dry else "")


class Guard:
    """Admits remediation actions within a route's bounds; state in Prefect Variables,
    serialised by a global concurrency limit of 1 (see the module docstring)."""

    def __init__(self, route: AlertRoute, lock_timeout: float = 60.0, shared: bool = False) -> None:
        """`shared`: one ledger per target whatever the alert (e.g. a pool is failed over
        once, whether "not ready" or "heartbeat stale" fired); else one per alert and target.
        The rate limit is always per route."""
        self.route = route
        self.lock_timeout = lock_timeout
        self.shared = shared

    def _target(self, key: str) -> str:
        return key if self.shared else f"{self.route.alertname}|{key}"

    _lock_ready: ClassVar[set[str]] = set()

    @classmethod
    def ensure_lock(cls) -> None:
        """Create the guard's global concurrency limit (limit 1) when missing; once per
        process and API url (several processes may race: a lost race reads it back)."""
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound
        from prefect.settings import PREFECT_API_URL

        url = str(PREFECT_API_URL.value())
        if url in cls._lock_ready:
            return
        with _ENSURE:
            if url in cls._lock_ready:
                return
            with get_client(sync_client=True) as client:
                try:
                    limit = client.read_global_concurrency_limit_by_name(GUARD_LIMIT)
                    if limit.limit != 1 or not limit.active:
                        client.upsert_global_concurrency_limit_by_name(GUARD_LIMIT, 1)
                except ObjectNotFound:
                    try:
                        client.upsert_global_concurrency_limit_by_name(GUARD_LIMIT, 1)
                    except Exception:  # noqa: BLE001 - another process created it first
                        client.read_global_concurrency_limit_by_name(GUARD_LIMIT)
            cls._lock_ready.add(url)

    def _locked(self):
        from prefect.concurrency.sync import concurrency

        return concurrency(GUARD_LIMIT, occupy=1, timeout_seconds=self.lock_timeout, lease_duration=60, strict=True)

    @staticmethod
    def _read(name: str) -> dict[str, Any]:
        from prefect.variables import Variable

        value = Variable.get(name, default=None)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                value = None
        return value if isinstance(value, dict) else {}

    @staticmethod
    def _write(name: str, value: dict[str, Any], tags: list[str]) -> None:
        from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
        from prefect.variables import Variable

        try:
            Variable.set(name, value, overwrite=True, tags=tags)
        except (ObjectNotFound, PrefectHTTPStatusError) as exc:
            # reset (deleted) between Prefect's read and its update: create it again
            if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code != 404:
                raise
            Variable.set(name, value, overwrite=False, tags=tags)

    def admit(self, key: str, now: float | None = None, extra: dict[str, Any] | None = None) -> Decision:
        """Decide whether one action on `key` (e.g. "failover:docker") may happen now;
        counts it in the durable ledger when it may (or would, in a dry run)."""
        route = self.route
        if route.action == "none":
            return Decision("no_action", f"route {route.alertname}: action is none")
        dry = route.dry_run
        target_var = _variable_name("guard", self._target(key), dry)
        rate_var = _variable_name("rate", route.alertname, dry)
        self.ensure_lock()  # no lock, no action: overshooting the caps is worse than failing
        with self._locked():
            return self._decide(key, target_var, rate_var, dry, now, extra)

    def _decide(self, key, target_var, rate_var, dry, now, extra) -> Decision:
        route = self.route
        now = time.time() if now is None else now
        ledger = self._read(target_var)
        attempts = int(ledger.get("attempts", 0))
        last = float(ledger.get("last", 0.0))
        rate = self._read(rate_var)
        window = [t for t in rate.get("times", []) if now - float(t) < RATE_WINDOW_SECONDS]
        if attempts >= route.max_attempts:
            return Decision(
                "max_attempts", f"{key}: {attempts} of {route.max_attempts} attempts used", attempts, ledger
            )
        if last and now - last < route.cooldown_seconds:
            return Decision(
                "cooldown",
                f"{key}: last action {now - last:.1f} s ago, cooldown {route.cooldown_seconds:g} s",
                attempts,
                ledger,
            )
        if len(window) >= route.rate_limit:
            return Decision(
                "rate_limited",
                f"route {route.alertname}: {len(window)} actions in the "
                f"last {RATE_WINDOW_SECONDS:g} s, limit {route.rate_limit}",
                attempts,
                ledger,
            )
        ledger = {
            **ledger,
            "key": key,
            "attempts": attempts + 1,
            "last": now,
            "alertname": route.alertname,
            **(extra or {}),
        }
        tags = ["planflow", "remediation-guard"]
        self._write(target_var, ledger, tags)
        self._write(rate_var, {"route": route.alertname, "times": window + [now]}, tags)
        if dry:
            return Decision(
                "dry_run",
                f"{key}: dry run, attempt {attempts + 1} of {route.max_attempts} would act",
                attempts + 1,
                ledger,
            )
        return Decision("act", f"{key}: attempt {attempts + 1} of {route.max_attempts}", attempts + 1, ledger)

    def ledger(self, key: str) -> dict[str, Any]:
        return self._read(_variable_name("guard", self._target(key), self.route.dry_run))

    def update(self, key: str, **values: Any) -> None:
        """Add facts to a target's ledger (e.g. what a failover changed, to undo it)."""
        name = _variable_name("guard", self._target(key), self.route.dry_run)
        self._write(name, {**self._read(name), **values}, ["planflow", "remediation-guard"])

    def reset(self, key: str) -> dict[str, Any]:
        """Forget a target's attempts (the alert resolved); returns what was recorded."""
        from prefect.variables import Variable

        name = _variable_name("guard", self._target(key), self.route.dry_run)
        before = self._read(name)
        Variable.unset(name)
        return before
