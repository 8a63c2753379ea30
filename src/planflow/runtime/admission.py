"""Admission across runs: a step starts only once its pool's shared slots are taken.

Every pool's capacity is held in Prefect global concurrency limits (see
planflow.prefect.limits). Before the dispatcher starts a step it takes the step's slots
on each limit its demand touches, all or none: each limit is tried once without waiting
(one request to the server's increment-with-lease; Prefect's `concurrency()` takes the
same number of slots on every limit it names, while a step needs, say, 1500 cpu
millicore slots and 2048 MiB slots), in a fixed order, and whatever was taken is given
back at once when one is busy. The
dispatcher tries again on its next round, so no run ever holds part of a step's slots
while it waits (no deadlock between runs, nothing half-taken when it gives up).

Slots are held on a lease that Prefect's client renews while the step runs; when the
process holding them dies, the server takes them back once the lease runs out
(PLANFLOW_SLOT_LEASE_SECONDS, 60 s at least).

Every wait is bounded: slots held by other runs for longer than
PLANFLOW_SLOT_WAIT_SECONDS, or a Prefect server that does not answer for
PLANFLOW_SERVER_WAIT_SECONDS, fail the step with AdmissionError saying which and what to do.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.concurrency._leases import maintain_concurrency_lease
from prefect.settings import PREFECT_API_URL

from planflow.prefect.limits import RESOURCES, limit_name, slots
from planflow.runtime.dispatch import Assignment
from planflow.runtime.slot_wake import announce, announce_taken
from planflow.settings import settings

logger = logging.getLogger("planflow.admission")
LOCKED = 423  # the server's answer when a limit has not enough free slots
REFUSED_SECONDS = 0.25  # a refusal stands for steps that need as much or more, this long


class AdmissionError(RuntimeError):
    """A step could not take its pool's slots within the bound; it holds none."""


def _release(lease: UUID, limit: str | None = None, slots: int | None = None) -> None:
    """Give back `lease` (of `slots` slots, when known); once the server took its slots
    back, tell this machine's runs waiting for `limit` (slot_wake.py)."""
    with get_client(sync_client=True) as client:
        try:
            client.release_concurrency_slots_with_lease(lease)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 404:  # 404: the lease had already run out
                raise
        except httpx.TransportError as exc:  # the server is away: the lease runs out by itself
            logger.warning("could not give back lease %s (%s); its slots return when it runs out", lease, exc)
            return
    if limit is not None:
        announce(limit, slots)


class SharedSlots:
    """The dispatcher's `admit`: `take(assignment)` returns the held slots (an ExitStack
    to close when the step ends) or None while other runs hold them."""

    def __init__(
        self,
        lease_seconds: float | None = None,
        wait_seconds: float | None = None,
        server_wait_seconds: float | None = None,
    ) -> None:
        options = settings()
        self.lease = lease_seconds or options.slot_lease_seconds
        self.wait = wait_seconds or options.slot_wait_seconds
        self.server_wait = server_wait_seconds or options.server_wait_seconds
        self.poll_seconds = options.slot_poll_seconds  # the dispatcher's pace while a step waits (dispatch.py)
        self._waiting_since: dict[str, float] = {}
        self._server_down_since: float | None = None
        self._refused: dict[str, tuple[float, dict[str, float]]] = {}

    def wanted(self, a: Assignment) -> dict[str, int]:
        """Limit name -> slots the step occupies (only the resources it uses)."""
        wanted = {limit_name(a.pool, r): slots(r, a.demand.get(r, 0.0)) for r in RESOURCES}
        return {name: n for name, n in wanted.items() if n > 0}

    def _surely_refused(self, a: Assignment, now: float) -> bool:
        """A step that needs at least what a step of the same pool was just refused (within
        REFUSED_SECONDS) would be refused too: no request (the dispatcher's round over many
        ready steps would otherwise ask the server once or twice per step)."""
        refused = self._refused.get(a.pool)
        if refused is None or now - refused[0] > REFUSED_SECONDS:
            return False
        return all(a.demand.get(r, 0.0) >= refused[1].get(r, 0.0) for r in ("cpu", "gpu", "mem_gib"))

    def take(self, a: Assignment) -> ExitStack | None:
        now = time.monotonic()
        since = self._waiting_since.setdefault(a.step, now)
        if self._surely_refused(a, now):
            return self._wait_more(a, now, since)
        stack = ExitStack()
        stack.callback(self._refused.pop, a.pool, None)  # once these slots are given back, ask again
        try:
            with get_client(sync_client=True) as client:
                for name, n in self.wanted(a).items():
                    response = client.increment_concurrency_slots_with_lease(
                        names=[name], slots=n, mode="concurrency", lease_duration=self.lease
                    )
                    granted = response.json()
                    if not granted.get("limits"):
                        raise AdmissionError(
                            f"step '{a.step}': pool '{a.pool}' has no concurrency limit '{name}'. "
                            "Fix: planflow pools sync (or planflow blocks apply)"
                        )
                    lease = UUID(granted["lease_id"])
                    announce_taken(name, n)  # this machine's runs count it into their reads (slot_wake.py)
                    stack.callback(_release, lease, name, n)
                    stack.enter_context(
                        maintain_concurrency_lease(lease, self.lease, raise_on_lease_renewal_failure=False)
                    )
        except httpx.HTTPStatusError as exc:
            stack.close()  # give back what was taken: all or none
            if exc.response.status_code != LOCKED:
                raise AdmissionError(f"step '{a.step}': the Prefect server refused its slots: {exc}") from None
            self._server_down_since = None
            self._refused[a.pool] = (now, dict(a.demand))
            return self._wait_more(a, now, since)
        except httpx.TransportError as exc:
            stack.close()
            return self._server_down(a, exc, now)
        except BaseException:
            stack.close()
            raise
        self._waiting_since.pop(a.step, None)
        self._server_down_since = None
        return stack

    def _server_down(self, a: Assignment, exc: Exception, now: float) -> None:
        if self._server_down_since is None:
            self._server_down_since = now
        if now - self._server_down_since > self.server_wait:
            raise AdmissionError(
                f"step '{a.step}' could not take its slots on pool '{a.pool}': the Prefect server at "
                f"{PREFECT_API_URL.value()} did not answer for {self.server_wait:.0f} s "
                f"({type(exc).__name__}: {exc}). Nothing is held. Fix: start the server "
                f"(planflow server up) or raise PLANFLOW_SERVER_WAIT_SECONDS"
            ) from None
        return None

    def _wait_more(self, a: Assignment, now: float, since: float) -> None:
        """None: the refused step waits on; an AdmissionError naming the wait once it ran out."""
        if now - since > self.wait:
            raise AdmissionError(self._waited(a, now - since)) from None

    def _waited(self, a: Assignment, seconds: float) -> str:
        wanted = ", ".join(f"{n} slots of {name}" for name, n in self.wanted(a).items())
        return (
            f"step '{a.step}' waited {seconds:.0f} s for {wanted}, held by other runs. Fix: look at "
            f"`planflow calendar {a.pool}`, or raise PLANFLOW_SLOT_WAIT_SECONDS"
        )
