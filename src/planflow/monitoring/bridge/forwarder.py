"""The bridge's forwarder: spooled events to Prefect's POST /api/events, in order, with
backoff while Prefect fails."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from planflow.monitoring import prefect_api
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
    ) -> None:
        self.spool, self.metrics, self.api_url = spool, metrics, api_url
        self.batch, self.max_backoff, self.retention = batch, max_backoff, retention
        self.wake = asyncio.Event()
        self.stop = asyncio.Event()
        # for readiness: since when forwarding fails without a success, and why
        self.failing_since: float | None = None
        self.last_error: BaseException | None = None

    async def _post(self, http: httpx.AsyncClient, events: list[str]) -> httpx.Response:
        return await http.post(
            f"{self.api_url}/events", content="[" + ",".join(events) + "]", headers={"Content-Type": "application/json"}
        )

    async def forward_once(self, http: httpx.AsyncClient) -> int:
        """Forward one batch; returns how many were accepted (raises when Prefect fails)."""
        rows = self.spool.pending(self.batch)
        if not rows:
            return 0
        response = await self._post(http, [event for _, event in rows])
        if response.status_code == 422:
            # One bad event must not block the rest: send them one by one.
            accepted = 0
            for seq, event in rows:
                single = await self._post(http, [event])
                if single.status_code == 422:
                    self.spool.mark([seq], error=single.text[:500])
                    self.metrics.forward_failures.inc()
                    log.error("Prefect refused event %s: %s", seq, single.text[:500])
                else:
                    single.raise_for_status()
                    self.spool.mark([seq])
                    accepted += 1
            self.metrics.forwarded.inc(accepted)
            return accepted
        response.raise_for_status()
        self.spool.mark([seq for seq, _ in rows])
        self.metrics.forwarded.inc(len(rows))
        return len(rows)

    async def run(self) -> None:
        """Forward until stopped: a batch whenever there is one (woken by new alerts,
        else once a second); while Prefect fails, the same batch again with exponential
        backoff (0.25 s doubling up to `max_backoff`), never dropping it."""
        last_prune = 0.0
        until_sent = AsyncRetrying(
            retry=retry_if_exception_type(Exception),  # Prefect down, timing out, 5xx
            wait=wait_exponential(multiplier=0.25, min=0.25, max=self.max_backoff),
            sleep=self._backoff,
            before_sleep=self._failed,
        )
        async with httpx.AsyncClient(timeout=10.0, headers=prefect_api.auth_headers()) as http:
            while not self.stop.is_set():
                try:
                    sent = await until_sent(self.forward_once, http)
                except _Stopping:
                    return
                self.failing_since, self.last_error = None, None
                if time.time() - last_prune > 3600:
                    self.spool.prune(self.retention)
                    last_prune = time.time()
                if sent == 0:
                    await self._sleep(1.0, wakeable=True)

    def _failed(self, attempt: RetryCallState) -> None:
        self.metrics.forward_failures.inc()
        exc = attempt.outcome.exception() if attempt.outcome else None
        wait = attempt.next_action.sleep if attempt.next_action else 0.0
        self.failing_since = self.failing_since or time.time()
        self.last_error = exc
        log.warning("forwarding to %s failed (%r); retrying in %.2f s", self.api_url, exc, wait)

    async def _backoff(self, seconds: float) -> None:
        await self._sleep(seconds, wakeable=False)
        if self.stop.is_set():
            raise _Stopping

    async def _sleep(self, seconds: float, wakeable: bool) -> None:
        waiters = [asyncio.ensure_future(self.stop.wait())]
        if wakeable:
            waiters.append(asyncio.ensure_future(self.wake.wait()))
        done, pending = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        self.wake.clear()
