"""The guard: whether a remediation may act now, within its AlertRoute's bounds.

**Where the attempts are counted, and why there.** A storm of the same alert (the
bridge turns Alertmanager's duplicates into one event, but a flapping rule or many
failed runs make many events) starts many remediation flow runs, in separate
processes, possibly on several machines. Their only shared, durable store is the
Prefect server, so the guard keeps its ledger in Prefect Variables (one per target,
`planflow_guard_<hash>`, plus one per route for the rate window). Every read-check-write
and every write of a ledger (`admit`, `update`, `reset`) holds a Prefect global
concurrency limit of 1 (`planflow-remediation-guard`): a lease held on the server,
released even if the holder dies (lease expiry). A restarted server, worker or flow
keeps the count; `planflow automations apply` does not reset it; a resolved alert does
(failover, rescale), and `Guard.reset` does by hand. Dry-run decisions go to a separate
ledger (`..._dry`), so a dry run shows the same bounded set of "would do" records
without using up the real attempts.

    decision = Guard(load_route("PlanflowWorkPoolNotReady"), shared=True).admit("failover:docker")
    if decision.act: ...
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from prefect.variables import Variable

from planflow.prefect.blocks.alert_route import AlertRoute

GUARD_LIMIT = "planflow-remediation-guard"
RATE_WINDOW_SECONDS = 60.0
LEDGER_TAGS = ["planflow", "remediation-guard"]
LEDGER_PREFIX = "planflow_guard_"
_ENSURE = threading.Lock()
_lock_ready: set[str] = set()


def ensure_lock() -> None:
    """Create the guard's global concurrency limit (limit 1) when missing; once per
    process and API url (several processes may race: a lost race reads it back)."""
    url = str(PREFECT_API_URL.value())
    if url in _lock_ready:
        return
    with _ENSURE:
        if url in _lock_ready:
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
        _lock_ready.add(url)


@contextmanager
def guard_lock(timeout: float = 60.0) -> Iterator[None]:
    """Hold the guard's server-side lock (created when missing). No lock, no action:
    overshooting the caps is worse than failing, so a timeout raises."""
    ensure_lock()
    with concurrency(GUARD_LIMIT, occupy=1, timeout_seconds=timeout, lease_duration=60, strict=True):
        yield


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

    @property
    def audit_outcome(self) -> str:
        """The remediation outcome this decision leads to when nothing else happens."""
        return {"act": "succeeded", "dry_run": "dry_run", "rate_limited": "rate_limited"}.get(self.outcome, "skipped")


def _variable_name(kind: str, key: str, dry: bool) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return f"planflow_{kind}_{digest}" + ("_dry" if dry else "")


def _read(name: str) -> dict[str, Any]:
    return _as_dict(Variable.get(name, default=None))


def _write(name: str, value: dict[str, Any]) -> None:
    Variable.set(name, value, overwrite=True, tags=LEDGER_TAGS)


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    return value if isinstance(value, dict) else {}


def all_ledgers() -> dict[str, dict[str, Any]]:
    """Every target ledger on the server (variable name -> what it holds), e.g. for
    `planflow stack down` to find the workers any rescale started."""
    with get_client(sync_client=True) as client:
        variables = client.read_variables()
    return {v.name: _as_dict(v.value) for v in variables if v.name.startswith(LEDGER_PREFIX)}


class Guard:
    """Admits remediation actions within a route's bounds and keeps what they did; state
    in Prefect Variables, every write under the guard's lock (see the module docstring)."""

    def __init__(self, route: AlertRoute, lock_timeout: float = 60.0, shared: bool = False) -> None:
        """`shared`: one ledger per target whatever the alert (e.g. a pool is failed over
        once, whether "not ready" or "heartbeat stale" fired); else one per alert and target.
        The rate limit is always per route."""
        self.route = route
        self.lock_timeout = lock_timeout
        self.shared = shared

    def _ledger_name(self, key: str) -> str:
        target = key if self.shared else f"{self.route.alertname}|{key}"
        return _variable_name("guard", target, self.route.dry_run)

    def admit(self, key: str, now: float | None = None, extra: dict[str, Any] | None = None) -> Decision:
        """Decide whether one action on `key` (e.g. "failover:docker") may happen now;
        counts it in the durable ledger when it may (or would, in a dry run)."""
        with guard_lock(self.lock_timeout):
            return self.admit_held(key, now, extra)

    def admit_held(self, key: str, now: float | None = None, extra: dict[str, Any] | None = None) -> Decision:
        """`admit`, for a caller that holds the guard's lock (guard_lock) around its own
        check and action as well: e.g. the retry, whose check that a crash was not
        retried already must see what a retry of the same crash running beside it did."""
        route = self.route
        if route.action == "none":
            return Decision("no_action", f"route {route.alertname}: action is none")
        return self._decide(key, time.time() if now is None else now, extra or {})

    def _decide(self, key: str, now: float, extra: dict[str, Any]) -> Decision:
        route = self.route
        target_var = self._ledger_name(key)
        rate_var = _variable_name("rate", route.alertname, route.dry_run)
        ledger = _read(target_var)
        attempts = int(ledger.get("attempts", 0))
        last = float(ledger.get("last", 0.0))
        window = [t for t in _read(rate_var).get("times", []) if now - float(t) < RATE_WINDOW_SECONDS]
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
        attempt = attempts + 1
        ledger = {**ledger, "key": key, "attempts": attempt, "last": now, "alertname": route.alertname, **extra}
        _write(target_var, ledger)
        _write(rate_var, {"route": route.alertname, "times": window + [now]})
        if route.dry_run:
            return Decision(
                "dry_run", f"{key}: dry run, attempt {attempt} of {route.max_attempts} would act", attempt, ledger
            )
        return Decision("act", f"{key}: attempt {attempt} of {route.max_attempts}", attempt, ledger)

    def ledger(self, key: str) -> dict[str, Any]:
        """What the ledger of `key` holds now ({} when nothing is recorded)."""
        return _read(self._ledger_name(key))

    def update(self, key: str, defaults: dict[str, Any] | None = None, **values: Any) -> dict[str, Any]:
        """Add facts to a target's ledger (e.g. what a failover changed, to undo it), under
        the lock; `defaults` are written only where the ledger has no such fact yet (e.g.
        a limit before the first change). Returns the ledger as written."""
        name = self._ledger_name(key)
        with guard_lock(self.lock_timeout):
            current = _read(name)
            ledger = {**(defaults or {}), **current, **values}
            _write(name, ledger)
        return ledger

    def reset(self, key: str) -> dict[str, Any]:
        """Forget a target's attempts and facts (the alert resolved), under the lock;
        returns what was recorded."""
        name = self._ledger_name(key)
        with guard_lock(self.lock_timeout):
            before = _read(name)
            Variable.unset(name)
        return before
