"""Guardrails against the real Prefect server: the ledger lives in Prefect Variables and
the check-and-count is serialised by a Prefect global concurrency limit, so concurrent
remediation runs (threads here, processes in production) cannot exceed the caps."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from planflow.prefect.blocks.alert_route import AlertRoute, Guard, route_name

from tests.remediation.conftest import create_process_pool, delete_pools, route_override


def _route(**values) -> AlertRoute:
    return AlertRoute(alertname=f"StormTest{uuid.uuid4().hex[:8]}", action="failover", **values)


def _storm(route: AlertRoute, keys: list[str]) -> list[str]:
    guard = Guard(route)
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [d.outcome for d in pool.map(guard.admit, keys)]


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


def test_dry_run_failover_flow_changes_nothing_but_records_it(registered_blocks):
    """The failover flow with a dry-run route: the pool stays unpaused, the flow's result,
    events and artifact say what it would have done."""
    from prefect.client.orchestration import get_client

    from planflow.remediation.actions import failover

    alert = "PlanflowPoolFailureRateHigh"
    pool = f"dry-{uuid.uuid4().hex[:6]}"
    create_process_pool(pool, backup_pool="local")
    try:
        with route_override(alert, dry_run=True):
            result = failover(alertname=alert, work_pool=pool, event_id=str(uuid.uuid4()))
            assert result["outcome"] == "dry_run", result
            assert any("would pause" in line for line in result["actions"]), result
            with get_client(sync_client=True) as client:
                assert not client.read_work_pool(pool).is_paused
    finally:
        delete_pools([pool])
