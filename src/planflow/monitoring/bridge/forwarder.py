"""The bridge's forwarder: spooled events to Prefect's POST /api/events, in order, with
backoff while Prefect fails; a storm coalesced and lost alerts re-sent (delivery.py).

While it waits (idle, or in its backoff) it probes Prefect's /api/health every
`probe_seconds`: the moment Prefect answers again it drains the spool instead of
sleeping out its backoff, and new alerts cap a longer wait at `wake_cap` seconds."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from planflow.monitoring import prefect_api
from planflow.monitoring.bridge.delivery import Coalescer, Reconciler
from planflow.monitoring.bridge.spool import Spool
from planflow.monitoring.metrics import BridgeMetrics

log = logging.getLogger("planflow.bridge")


class _Stopping(Exception):
    """The forwarder was stopped while it waited to retry."""


class Forwarder:
    """Sends spooled events to POST /api/events, in order, with backoff while it fails."""

    def __init__(
        self,
        spool: Spool,
        metrics: BridgeMetrics,
        api_url: str,
        batch: int = 200,
        max_backoff: float = 30.0,
        retention: float = 7 * 86400,
        probe_seconds: float = 1.0,
        wake_cap: float = 1.5,
        coalesce_seconds: float = 60.0,
        confirm_seconds: float = 30.0,
    ) -> None:
        self.spool, self.metrics, self.api_url = spool, metrics, api_url
        self.batch, self.max_backoff, self.retention = batch, max_backoff, retention
        self.probe_seconds, self.wake_cap = probe_seconds, wake_cap
        self.wake = asyncio.Event()
        self.stop = asyncio.Event()
        # for readiness: since when forwarding fails without a success, and why
        self.failing_since: float | None = None
        self.last_error: BaseException | None = None
        self.coalescer = Coalescer(spool, coalesce_seconds)
        self.reconciler = Reconciler(spool, api_url, confirm_seconds)
        self.last_up = time.time()  # when Prefect last answered
        self.down = False  # Prefect stopped answering since `last_up`
        self._http: httpx.AsyncClient | None = None
        self._last_confirm = 0.0

    async def _post(self, http: httpx.AsyncClient, events: list[str]) -> httpx.Response:
        return await http.post(
            f"{self.api_url}/events", content="[" + ",".join(events) + "]", headers={"Content-Type": "application/json"}
        )

    async def forward_once(self, http: httpx.AsyncClient) -> int:
        """Forward one batch; returns how many were accepted (raises when Prefect fails)."""
        rows = self.spool.pending(self.batch)
        if not rows:
            return 0
        events, coalesced = self.coalescer.plan(rows, time.time())
        response = await self._post(http, events)
        if response.status_code == 422:
            # One bad event must not block the rest: send them one by one. Each sent one is
            # recorded with its coalescing at once: a 5xx further on (retried from there)
            # had left the rows sent before it forwarded but not coalesced, so after a
            # Prefect restart they counted as leaders never acted on and were sent again
            leader_of = dict(coalesced)
            accepted = 0
            for row, event in zip(rows, events, strict=True):
                single = await self._post(http, [event])
                if single.status_code == 422:
                    self.spool.mark([row.seq], error=single.text[:500])
                    self.metrics.forward_failures.inc()
                    log.error("Prefect refused event %s: %s", row.seq, single.text[:500])
                    continue
                single.raise_for_status()
                self.spool.mark([row.seq])
                if row.seq in leader_of:
                    self.spool.coalesce([(row.seq, leader_of[row.seq])])
                accepted += 1
                self.metrics.forwarded.inc()
            return accepted
        response.raise_for_status()
        self.spool.mark([row.seq for row in rows])
        self.spool.coalesce(coalesced)
        if coalesced:
            log.info("%d alert(s) coalesced into the alert already sent for their pool", len(coalesced))
        self.metrics.forwarded.inc(len(rows))
        return len(rows)

    async def run(self) -> None:
        """Forward until stopped: a batch whenever there is one (woken by new alerts,
        else once a second); while Prefect fails, the same batch again with exponential
        backoff (0.25 s doubling up to `max_backoff`, cut short when Prefect answers
        /api/health again), never dropping it. After an outage, the tracked alerts
        Prefect lost are queued again (delivery.Reconciler)."""
        last_prune = 0.0
        until_sent = AsyncRetrying(
            retry=retry_if_exception_type(Exception),  # Prefect down, timing out, 5xx
            wait=wait_exponential(multiplier=0.25, min=0.25, max=self.max_backoff),
            sleep=self._backoff,
            before_sleep=self._failed,
        )
        async with httpx.AsyncClient(
            timeout=10.0, headers=prefect_api.auth_headers(), verify=prefect_api.tls_verify()
        ) as http:
            self._http = http
            while not self.stop.is_set():
                try:
                    sent = await until_sent(self.forward_once, http)
                except _Stopping:
                    return
                self.failing_since, self.last_error = None, None
                if sent:
                    await self._answered(http)
                if time.time() - last_prune > 3600:
                    self.spool.prune(self.retention)
                    last_prune = time.time()
                if sent == 0:
                    await self._sleep(self.probe_seconds, wakeable=True)
                    await self._check(http)

    async def _healthy(self, http: httpx.AsyncClient) -> bool:
        try:
            response = await http.get(f"{self.api_url}/health", timeout=min(2.0, self.probe_seconds * 2))
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _check(self, http: httpx.AsyncClient) -> None:
        """While idle: is Prefect up (and back after an outage)? Confirm recent actions."""
        if not await self._healthy(http):
            self._went_down()
            return
        await self._answered(http)
        now = time.time()
        if now - self._last_confirm >= 5 * self.probe_seconds:
            self._last_confirm = now
            try:
                await self.reconciler.confirm(http, now - self.reconciler.confirm_seconds)
            except (httpx.HTTPError, ValueError, KeyError) as exc:  # never end the forwarder
                log.warning("could not read Prefect's automation actions: %r", exc)

    def _went_down(self) -> None:
        if not self.down:
            log.warning(
                "Prefect at %s stopped answering (last answer %.1f s ago)", self.api_url, time.time() - self.last_up
            )
        self.down = True

    async def _answered(self, http: httpx.AsyncClient) -> None:
        """Prefect answered: after an outage, re-send the alerts it lost."""
        if self.down:
            try:
                resent = await self.reconciler.after_restart(http, self.last_up)
            except (httpx.HTTPError, ValueError, KeyError) as exc:  # not really back yet: retry at the next probe
                log.warning("Prefect is back but its events cannot be read yet: %r", exc)
                return
            self.down = False
            log.info("Prefect at %s answers again; %d lost alert(s) queued again", self.api_url, len(resent))
            if resent:
                self.wake.set()
        self.last_up = time.time()

    def _failed(self, attempt: RetryCallState) -> None:
        self.metrics.forward_failures.inc()
        self._went_down()
        exc = attempt.outcome.exception() if attempt.outcome else None
        wait = attempt.next_action.sleep if attempt.next_action else 0.0
        self.failing_since = self.failing_since or time.time()
        self.last_error = exc
        log.warning("forwarding to %s failed (%r); retrying in %.2f s", self.api_url, exc, wait)

    async def _backoff(self, seconds: float) -> None:
        """Wait up to `seconds`, ending early when Prefect's /api/health answers again
        after failing;
        new alerts cap what is left of the wait at `wake_cap` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        # Prefect down (not merely refusing): return once it answers. The attempt that just
        # failed to connect counts: Prefect may come back before the first probe here (CI
        # saw a 16 s backoff slept out with Prefect up since before it began).
        unreachable = isinstance(self.last_error, httpx.ConnectError)
        while loop.time() < deadline:
            if self.wake.is_set():
                deadline = min(deadline, loop.time() + self.wake_cap)
            await self._sleep(min(self.probe_seconds, max(0.0, deadline - loop.time())), wakeable=False)
            if self.stop.is_set():
                raise _Stopping
            if self._http is None:
                continue
            if not await self._healthy(self._http):
                unreachable = True
            elif unreachable:
                return
        if self.stop.is_set():
            raise _Stopping

    async def _sleep(self, seconds: float, wakeable: bool) -> None:
        waiters = [asyncio.ensure_future(self.stop.wait())]
        if wakeable:
            waiters.append(asyncio.ensure_future(self.wake.wait()))
        done, pending = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if wakeable:
            self.wake.clear()
