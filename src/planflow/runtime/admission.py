"""Admission across runs: a step starts only once its pool's shared slots are taken.

Every pool's capacity is held in Prefect global concurrency limits (see
planflow.prefect.limits). Before the dispatcher starts a step it takes the step's slots
on each limit its demand touches, all or none: each limit is tried once without waiting,
in a fixed order, and whatever was taken is given back at once when one is busy. The
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

import time
from contextlib import ExitStack

import httpx
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.settings import PREFECT_API_URL

from planflow.prefect.limits import RESOURCES, limit_name, slots
from planflow.runtime.dispatch import Assignment
from planflow.settings import settings

LOCKED = 423  # the server's answer when a limit has not enough free slots


class AdmissionError(RuntimeError):
    """A step could not take its pool's slots within the bound; it holds none."""


def _busy(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == LOCKED


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
        self._waiting_since: dict[str, float] = {}
        self._server_down_since: float | None = None

    def wanted(self, a: Assignment) -> dict[str, int]:
        """Limit name -> slots the step occupies (only the resources it uses)."""
        wanted = {limit_name(a.pool, r): slots(r, a.demand.get(r, 0.0)) for r in RESOURCES}
        return {name: n for name, n in wanted.items() if n > 0}

    def take(self, a: Assignment) -> ExitStack | None:
        now = time.monotonic()
        since = self._waiting_since.setdefault(a.step, now)
        stack = ExitStack()
        try:
            for name, n in self.wanted(a).items():
                stack.enter_context(
                    concurrency(
                        name,
                        occupy=n,
                        max_retries=0,
                        lease_duration=self.lease,
                        strict=True,
                        raise_on_lease_renewal_failure=False,
                    )
                )
        except ConcurrencySlotAcquisitionError as exc:
            stack.close()  # give back what was taken: all or none
            if _busy(exc):
                self._server_down_since = None
                if now - since > self.wait:
                    raise AdmissionError(self._waited(a, now - since)) from None
                return None
            if "must be created" in str(exc):
                raise AdmissionError(
                    f"step '{a.step}': pool '{a.pool}' has no concurrency limits ({', '.join(self.wanted(a))}). "
                    f"Fix: planflow pools sync (or planflow blocks apply)"
                ) from None
            return self._server_down(a, exc, now)
        except BaseException:
            stack.close()
            raise
        self._waiting_since.pop(a.step, None)
        self._server_down_since = None
        return stack

    def _server_down(self, a: Assignment, exc: BaseException, now: float) -> None:
        if self._server_down_since is None:
            self._server_down_since = now
        if now - self._server_down_since > self.server_wait:
            cause = exc.__cause__ or exc
            raise AdmissionError(
                f"step '{a.step}' could not take its slots on pool '{a.pool}': the Prefect server at "
                f"{PREFECT_API_URL.value()} did not answer for {self.server_wait:.0f} s "
                f"({type(cause).__name__}: {cause}). Nothing is held. Fix: start the server "
                f"(planflow server up) or raise PLANFLOW_SERVER_WAIT_SECONDS"
            ) from None
        return None

    def _waited(self, a: Assignment, seconds: float) -> str:
        wanted = ", ".join(f"{n} slots of {name}" for name, n in self.wanted(a).items())
        return (
            f"step '{a.step}' waited {seconds:.0f} s for {wanted}, held by other runs. Fix: look at "
            f"`planflow calendar {a.pool}`, or raise PLANFLOW_SLOT_WAIT_SECONDS"
        )
