"""A child killed for memory, as the distributed executor handles it: told apart on any
pool type, the run again admitted by the remediation gate, its larger memory held.

- `kill_of`: Docker's `State.OOMKilled` and Kubernetes' `OOMKilled` (oom.py), or a
  process-pool child's own watchdog record (memory_watch.py);
- `admit`: the run again passes the gate (oom_gate.py: guarded by the AlertRoute
  `component-oom-killed` and audited as the remediation `oom-retry`), else
  OomRetryRefusedError with the guard's reason;
- `more_slots`: before the run again starts, the memory beyond what the dispatcher took
  for the step (or, on another pool, the whole demand there) is taken from the run's
  own dispatch ledger and from the pool's slots shared with every other run
  (admission.py), and given back when it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import PrefectHTTPStatusError

from planflow.prefect.limits import SLOTS_PER_UNIT, slots
from planflow.prefect.reserved import OOM_KILLED_TAG
from planflow.runtime.admission import AdmissionError, SharedSlots
from planflow.runtime.dispatch import Assignment, ResourceLedger
from planflow.runtime.memory_watch import oom_from_watchdog
from planflow.runtime.oom import OomKill, oom_of_flow_run
from planflow.runtime.oom_gate import OomRetry, ask
from planflow.settings import settings

POLL_SECONDS = 0.5  # how often a run again waiting for its larger memory asks again


class OomRetryRefusedError(RuntimeError):
    """A component killed for memory may not run again now (the guard said no)."""


def mark_oom_killed(flow_run: FlowRun) -> None:
    """Tag a child run killed for memory (OOM_KILLED_TAG), so the exporter counts it apart
    from its pool's failures: the failover must not pause a pool for a component's memory.
    Not taken as a reason to fail the run: a warning says what could not be tagged."""
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, tags=sorted({*(flow_run.tags or []), OOM_KILLED_TAG}))
    except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
        logging.getLogger(__name__).warning(
            "could not tag flow run %s (killed for memory) %s: %s; the exporter counts it as a crash of pool %r",
            flow_run.id,
            OOM_KILLED_TAG,
            exc,
            flow_run.work_pool_name,
        )


def kill_of(flow_run_id: str, pool_type: str) -> OomKill | None:
    """The kill for memory of a crashed child flow run, where it can be told."""
    if pool_type == "process":
        return oom_from_watchdog(flow_run_id)
    return oom_of_flow_run(flow_run_id, pool_type)


def admit(request: OomRetry) -> None:
    """Return when the gate admits `request`; else OomRetryRefusedError saying why."""
    answer = ask(request)
    if not answer.act:
        raise OomRetryRefusedError(
            f"component '{request.step}' of '{request.pipeline}' was killed for memory ({request.where}) at "
            f"{request.was_gib:.3g} GiB; its run again with {request.now_gib:.3g} GiB on pool '{request.to_pool}' "
            f"was refused ({answer.outcome}: {answer.reason}). Fix: run the pipeline again once the OOM kills "
            "calm down, or raise the bounds of the AlertRoute 'component-oom-killed' (`planflow blocks`)"
        )


def extra_demand(a: Assignment, pool: str, mem_gib: float) -> dict[str, float]:
    """What a run again with `mem_gib` on `pool` needs beyond what the dispatcher holds for `a`.

    On the same pool, counted in whole shared slots (MiB) as the pool's limits count
    them: the extra is the new limit's slots less the held ones, not a rounded-up
    difference (0.5 GiB after a learned 0.487 asked for 14 MiB where 13 were left, and
    waited for them for ever)."""
    if pool == a.pool:
        held = float(a.demand.get("mem_gib", 0.0))
        units = slots("mem_gib", mem_gib) - slots("mem_gib", held)
        return {"mem_gib": max(0, units) / SLOTS_PER_UNIT["mem_gib"]}
    return {**{k: float(v) for k, v in a.demand.items()}, "mem_gib": mem_gib}


def never_fits(ledger: ResourceLedger, a: Assignment, pool: str, extra: dict[str, float]) -> str | None:
    """Why `extra` can never be held on `pool` beside what this run holds for `a` itself
    (None when it can): then waiting for the run's other steps would be for nothing."""
    own = a.demand if pool == a.pool else {}
    over = ledger.over_capacity(pool, {r: float(own.get(r, 0.0)) + v for r, v in extra.items()})
    return ", ".join(f"{r} {d:g} > {c:g}" for r, (d, c) in over.items()) or None


@contextmanager
def in_ledger(ledger: ResourceLedger | None, a: Assignment, pool: str, extra: dict[str, float]) -> Iterator[None]:
    """Hold `extra` in this run's own dispatch ledger (when it knows `pool`); waits while
    the run's other steps use it, at most PLANFLOW_SLOT_WAIT_SECONDS."""
    if ledger is None or pool not in ledger.capacity:
        yield
        return
    impossible = never_fits(ledger, a, pool, extra)
    if impossible:
        raise AdmissionError(
            f"step '{a.step}' cannot run again on pool '{pool}' with {extra} more: {impossible} (its capacity). "
            "Fix: raise the pool's capacity (`planflow pools set`) or lower oom_max_mem_gib (PlannerSettings)"
        )
    wait = settings().slot_wait_seconds
    deadline = time.monotonic() + wait
    while True:
        with ledger.lock:
            if ledger.fits(pool, extra):
                ledger.acquire(pool, extra)
                break
        if time.monotonic() > deadline:
            raise AdmissionError(
                f"step '{a.step}' waited {wait:.0f} s for {extra} more on pool '{pool}' to run again, held by "
                "this run's other steps. Fix: raise PLANFLOW_SLOT_WAIT_SECONDS or the pool's capacity"
            )
        time.sleep(POLL_SECONDS)
    try:
        yield
    finally:
        ledger.release(pool, extra)


@contextmanager
def more_slots(
    a: Assignment, pool: str, mem_gib: float, slots: SharedSlots | None = None, ledger: ResourceLedger | None = None
) -> Iterator[float]:
    """Hold the extra memory of a run again in the run's dispatch `ledger` and in `pool`'s
    shared slots while the block runs (yields the GiB held beyond the dispatcher's);
    waits while other steps or runs hold them, at most PLANFLOW_SLOT_WAIT_SECONDS (then
    AdmissionError, nothing held)."""
    extra = extra_demand(a, pool, mem_gib)
    if not any(v > 0 for v in extra.values()):
        yield 0.0
        return
    with in_ledger(ledger, a, pool, extra):
        if not settings().shared_slots:
            yield extra["mem_gib"]
            return
        slots = slots or SharedSlots()
        wanted = Assignment(step=f"{a.step} (run again with {mem_gib:.3g} GiB)", pool=pool, demand=extra, priority=0)
        while (held := slots.take(wanted)) is None:
            time.sleep(POLL_SECONDS)
        with held:
            yield extra["mem_gib"]
