"""Guardrails against the real Prefect server: the ledger lives in Prefect Variables and
the check-and-count is serialised by a Prefect global concurrency limit, so concurrent
remediation runs (threads here, processes in production) cannot exceed the caps."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from planflow.prefect.blocks.alert_route import AlertRoute, load_route, route_name
from planflow.remediation.alert import AlertEvent
from planflow.remediation.guard import Guard

from tests.remediation.conftest import route_override


def _route(**values) -> AlertRoute:
    return AlertRoute(alertname=f"StormTest{uuid.uuid4().hex[:8]}", action="failover", **values)


def _storm(route: AlertRoute, keys: list[str]) -> list[str]:
    """Admit every key at once, from 8 threads; all at the same instant, so that the
    outcome depends on the lock, not on how fast this machine gets through 100 admits."""
    guard = Guard(route)
    now = time.time()
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [d.outcome for d in pool.map(lambda key: guard.admit(key, now=now), keys)]


def test_storm_of_100_same_alerts_acts_once_within_cooldown(registered_blocks):
    route = _route(max_attempts=3, cooldown_seconds=60, rate_limit=10)
    outcomes = _storm(route, ["failover:docker"] * 100)
    assert outcomes.count("act") == 1, outcomes
    assert set(outcomes) <= {"act", "cooldown"}
    assert Guard(route).ledger("failover:docker")["attempts"] == 1


def test_storm_without_cooldown_is_capped_by_max_attempts(registered_blocks):
    route = _route(max_attempts=3, cooldown_seconds=0, rate_limit=100)
    outcomes = _storm(route, ["retry:run-1"] * 100)
    assert outcomes.count("act") == 3, outcomes
    assert outcomes.count("max_attempts") == 97


def test_rate_limit_bounds_actions_per_minute_across_targets(registered_blocks):
    route = _route(max_attempts=5, cooldown_seconds=0, rate_limit=4)
    outcomes = _storm(route, [f"retry:run-{i}" for i in range(100)])
    assert outcomes.count("act") == 4, outcomes
    assert outcomes.count("rate_limited") == 96


def test_dry_run_records_the_bounded_set_but_uses_no_real_attempts(registered_blocks):
    route = _route(max_attempts=2, cooldown_seconds=0, rate_limit=100, dry_run=True)
    outcomes = _storm(route, ["failover:docker"] * 50)
    assert outcomes.count("dry_run") == 2 and "act" not in outcomes, outcomes
    real = route.model_copy(update={"dry_run": False})
    assert Guard(real).ledger("failover:docker") == {}  # the real ledger is untouched
    assert Guard(real).admit("failover:docker").outcome == "act"


def test_reset_forgets_attempts(registered_blocks):
    route = _route(max_attempts=1, cooldown_seconds=0, rate_limit=100)
    guard = Guard(route)
    assert guard.admit("failover:p").act
    assert guard.admit("failover:p").outcome == "max_attempts"
    assert guard.reset("failover:p")["attempts"] == 1
    assert guard.admit("failover:p").act


def test_route_none_never_acts_and_routes_have_kebab_names(registered_blocks):
    assert not Guard(AlertRoute(alertname="X", action="none")).admit("k").counted
    assert route_name("PlanflowWorkPoolNotReady") == "planflow-work-pool-not-ready"


def test_dry_run_failover_flow_changes_nothing_but_records_it(module_leftovers):
    """The failover flow with a dry-run route: the pool stays unpaused, the flow's result,
    events and artifact say what it would have done."""
    from prefect.client.orchestration import get_client

    from planflow.remediation.failover import failover

    alert = "PlanflowWorkerHeartbeatStale"  # (a failure-rate alert acts only where runs failed: failure_check)
    pool = module_leftovers.pool(f"dry-{uuid.uuid4().hex[:6]}", backup_pool="local", served=True)
    with route_override(alert, dry_run=True):
        result = failover(AlertEvent(alertname=alert, work_pool=pool, event_id=uuid.uuid4()))
        assert result["outcome"] == "dry_run", result
        assert any("would pause" in line for line in result["actions"]), result
        with get_client(sync_client=True) as client:
            assert not client.read_work_pool(pool).is_paused


# -- every write of a ledger under the lock ------------------------------------------------
def test_concurrent_updates_and_resets_lose_nothing(registered_blocks):
    """40 updates (one fact each) and 8 resets at once on one ledger: every fact ends up
    exactly once, either in what a reset returned or in the ledger left at the end (an
    unlocked read-modify-write loses some, or brings back what a reset removed)."""
    guard = Guard(_route(max_attempts=100, cooldown_seconds=0, rate_limit=1000))
    key = "failover:concurrent"
    jobs = [("update", i) for i in range(40)]
    for n, at in enumerate(range(5, 45, 5)):
        jobs.insert(at + n, ("reset", n))

    def run(job: tuple[str, int]) -> dict:
        kind, i = job
        return guard.reset(key) if kind == "reset" else (guard.update(key, **{f"fact{i}": i}) and {})

    with ThreadPoolExecutor(max_workers=8) as pool:
        snapshots = list(pool.map(run, jobs))
    seen = [name for ledger in [*snapshots, guard.ledger(key)] for name in ledger if name.startswith("fact")]
    counts = {f"fact{i}": seen.count(f"fact{i}") for i in range(40)}
    assert all(count == 1 for count in counts.values()), {k: c for k, c in counts.items() if c != 1}


def test_updates_never_undo_a_counted_attempt(registered_blocks):
    """Attempts counted by `admit` and facts added by `update` at the same time: all kept."""
    guard = Guard(_route(max_attempts=100, cooldown_seconds=0, rate_limit=1000))
    key = "rescale:concurrent"
    jobs = [("admit", i) if i % 2 else ("update", i) for i in range(40)]

    def run(job: tuple[str, int]) -> str:
        kind, i = job
        return guard.admit(key).outcome if kind == "admit" else bool(guard.update(key, **{f"fact{i}": i})) and "update"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(run, jobs))
    assert outcomes.count("act") == 20, outcomes
    ledger = guard.ledger(key)
    assert ledger["attempts"] == 20, ledger
    assert {f"fact{i}" for i in range(0, 40, 2)} <= set(ledger), sorted(ledger)


def test_update_defaults_keep_the_first_value(registered_blocks):
    guard = Guard(_route())
    key = f"rescale:defaults-{uuid.uuid4().hex[:6]}"
    guard.update(key, defaults={"pool_limit_before": 1}, scaling=True)
    ledger = guard.update(key, defaults={"pool_limit_before": 2}, scaling=False)
    assert ledger == {"pool_limit_before": 1, "scaling": False}
    assert guard.reset(key) == ledger and guard.ledger(key) == {}


def test_two_retries_of_one_crash_side_by_side_count_one_attempt(registered_blocks, monkeypatch):
    """A SIGKILL is reported Crashed twice, seconds apart; the automation starts a retry
    for each, and they can run side by side. Both checked for an earlier AwaitingRetry
    before either had set one, and each counted an attempt ("planflow retry 2/2" after one
    crash). The check and the retry now go under the guard's lock: one attempt counted,
    the other retry sets the same AwaitingRetry again or finds it retried."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed, Running

    from planflow.prefect.blocks.alert_route import FLOW_RUN_FAILED
    from planflow.remediation.retry import RETRY_MESSAGE, retry_run

    with route_override(FLOW_RUN_FAILED, max_attempts=2, cooldown_seconds=0, rate_limit=100, backoff_seconds=600):
        with get_client(sync_client=True) as client:
            flow_id = client.create_flow_from_name(f"crash-twice-{uuid.uuid4().hex[:8]}")
            deployment = client.create_deployment(flow_id=flow_id, name="no-worker")
            run = client.create_flow_run_from_deployment(deployment)
            client.set_flow_run_state(run.id, Running(), force=True)
            client.set_flow_run_state(run.id, Crashed(message="Process exited with status code: -9"), force=True)
        alert = AlertEvent(event="prefect.flow-run.Crashed", resource_id=f"prefect.flow-run.{run.id}")
        # each outcome is counted on the Pushgateway under the same lock: a retry that wrote its
        # outcome while it held the lock waited 30 s for itself, and its count was lost
        from planflow.remediation import audit

        counted: list[tuple[str, str]] = []
        monkeypatch.setenv("PLANFLOW_PUSHGATEWAY_URL", "http://127.0.0.1:9")  # never reached: _add_one is ours
        monkeypatch.setattr(audit, "_add_one", lambda url, action, outcome: counted.append((action, outcome)))
        with ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = list(pool.map(lambda _: retry_run(alert), range(2)))
        with get_client(sync_client=True) as client:
            states = client.read_flow_run_states(run.id)
        retries = [s.message for s in states if s.name == "AwaitingRetry"]
        assert retries and all(m.startswith(f"{RETRY_MESSAGE}1/2") for m in retries), (retries, outcomes)
        assert Guard(load_route(FLOW_RUN_FAILED)).ledger(f"retry:{run.id}")["attempts"] == 1, outcomes
        assert len(counted) == 2, (counted, outcomes)
