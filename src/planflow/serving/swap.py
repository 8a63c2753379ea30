"""Keep the served model in step with the pipeline's last Completed run.

`ModelSwapper.check()` asks the Prefect API for the newest Completed run; when it is
newer than the one served, its outputs are read and then swapped in with one reference
assignment: a request takes the model once when it starts, so a request in flight ends
on the model it began with and none is dropped. A run whose outputs cannot be read
leaves the previous model in place and raises `planflow_serving_model_load_failing`
(alert ServingModelLoadFailing) until a readable run completes.

A run that has just ended may not have its task runs recorded yet (Prefect 3 records
them from events, after the flow run's state): such a run is asked again at the next
poll, for up to `RECORD_GRACE_SECONDS` after its end, before it counts as broken.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import FlowRun

from planflow.monitoring.serving_metrics import ServingMetrics
from planflow.serving.loader import (
    LoadedRun,
    NotServableRun,
    RunOutputsError,
    ServedRuns,
    TaskRunsNotRecordedError,
    completed_runs,
    latest_completed_run,
    load_run,
    no_run_message,
)
from planflow.serving.path import OnlinePath

log = logging.getLogger("planflow.serving")
MIN_POLL_SECONDS = 0.2
MAX_POLL_SECONDS = 300.0
RECORD_GRACE_SECONDS = 120.0
FALLBACK_RUNS = 10  # older Completed runs tried when the newest cannot be read and nothing is served
CHECK_SECONDS = 600.0  # the most one check may take (the API's answers, a large model read from storage)


def check_poll_seconds(value: float) -> float:
    if not MIN_POLL_SECONDS <= value <= MAX_POLL_SECONDS:
        raise ValueError(
            f"poll interval {value!r} s is out of bounds: it must be between {MIN_POLL_SECONDS} and "
            f"{MAX_POLL_SECONDS} s. Fix: e.g. --poll-seconds 5"
        )
    return value


class ModelSwapper:
    def __init__(self, path: OnlinePath, metrics: ServingMetrics, served: ServedRuns = ServedRuns()) -> None:
        self.path = path
        self.metrics = metrics
        self.served = served  # the runs it may serve (`planflow serve --deployment, --tag`)
        self.current: LoadedRun | None = None
        self._load_problem: str | None = no_run_message(path.pipeline.name, served)
        self._api_problem: str | None = None  # the last check could not reach the Prefect API
        # the newest run whose outputs failed to load: not read again at each poll (only the
        # newest Completed run is ever read, so a server up for months keeps one id, not all)
        self._broken: str | None = None
        self.record_grace_seconds = RECORD_GRACE_SECONDS
        self._pending: set[str] = set()  # runs whose task runs the server has not recorded yet
        self._failing = False  # the newest run's outputs failed to load (not: it had none to serve)
        self._api_problem_since: datetime | None = None
        self._cut: str | None = None  # the last check was cut after CHECK_SECONDS (until one ends)

    @property
    def problem(self) -> str | None:
        """What keeps the service from serving the pipeline's newest run, or None: no run
        to load, a run that failed to load, or the Prefect API out of reach (then, with a
        model loaded, it is still served: /readyz says ready, and names the problem)."""
        problems = [p for p in (self._cut, self._api_problem, self._load_problem) if p]
        return "; ".join(problems) if problems else None

    @problem.setter
    def problem(self, value: str | None) -> None:
        self._load_problem = value

    def api_unreachable(self, exc: BaseException) -> None:
        """A check could not reach the Prefect API: named in `problem` until one does."""
        kept = f"; still serving run '{self.current.flow_run_name}'" if self.current else ""
        since = self._api_problem_since or datetime.now(UTC)
        self._api_problem_since = since
        self._api_problem = (
            f"cannot reach the Prefect API to check for a newer run (since {since:%Y-%m-%d %H:%M:%S} UTC): "
            f"{exc!r}{kept}. Fix: check that the Prefect server at PREFECT_API_URL is up"
        )

    async def check(self) -> bool:
        """Load the newest Completed run if it is not the one served; True on a swap."""
        name = self.path.pipeline.name
        async with get_client() as client:
            run = await latest_completed_run(client, name, self.served)
            self._api_problem = self._api_problem_since = None  # the API answered
            if run is None:
                if self.current is None:
                    self.problem = no_run_message(name, self.served)
                return False
            run_id = str(run.id)
            if self.current and run_id in (self.current.flow_run_id, self._broken):
                return False
            loaded = older = None  # older: the newest run cannot be read and nothing is served
            if run_id != self._broken:  # a run that failed to load is not read again
                try:
                    loaded = await load_run(client, run, self.path.loaded_steps, name)
                except RunOutputsError as exc:
                    if isinstance(exc, TaskRunsNotRecordedError) and self._recent(run):
                        self._not_recorded_yet(run_id, exc)
                        return False
                    self._failed(run_id, exc, failing=not isinstance(exc, NotServableRun))
            if loaded is None:  # with nothing served: its last good run (asked again at each poll)
                if self.current is not None:
                    return False
                loaded = older = await self._last_good(client, run_id)
                if loaded is None:
                    return False
        self._pending.discard(run_id)
        self.current = loaded  # the swap: one reference assignment
        self.problem = None if older is None else f"serving an older run, '{loaded.flow_run_name}': {self.problem}"
        self.metrics.swaps.inc()
        self.metrics.model_loaded.set(1)
        self.metrics.load_failing.set(1 if older is not None and self._failing else 0)
        if loaded.end_time:
            self.metrics.model_version.set(loaded.end_time.timestamp())
        log.info("serving %s: run '%s' (%s)", name, loaded.flow_run_name, loaded.flow_run_id)
        return True

    async def _last_good(self, client: PrefectClient, broken: str) -> LoadedRun | None:
        """The newest of the last FALLBACK_RUNS Completed runs, other than `broken`, whose
        outputs load (None: none does). A service started when the newest run was, e.g., a
        distributed one served nothing until a new run in process."""
        name = self.path.pipeline.name
        for run in await completed_runs(client, name, FALLBACK_RUNS + 1, self.served):
            if str(run.id) == broken:
                continue
            try:
                return await load_run(client, run, self.path.loaded_steps, name)
            except RunOutputsError as exc:
                log.info("older run '%s' of %s not served either: %s", run.name, name, exc)
        return None

    def _recent(self, run: FlowRun) -> bool:
        """The run ended less than the grace ago (its end time, else its state's time):
        the wait for its task runs has a bound even for a run without an end time."""
        ended = run.end_time or (run.state.timestamp if run.state else None)
        return ended is not None and (datetime.now(UTC) - ended).total_seconds() < self.record_grace_seconds

    def _not_recorded_yet(self, run_id: str, exc: RunOutputsError) -> None:
        if run_id not in self._pending:
            self._pending.add(run_id)
            log.info("%s; asking again at each poll for up to %.0f s after its end", exc, self.record_grace_seconds)
        if self.current is None:
            self.problem = f"{exc}; waiting for the server to record them"

    def _failed(self, run_id: str, exc: RunOutputsError, failing: bool = True) -> None:
        """The newest run is not read again; `failing`: its outputs failed to load (counted,
        and the alert's gauge up), else it has none to serve (a distributed run: passed over)."""
        self._pending.discard(run_id)
        self._broken = run_id
        self._failing = failing
        if failing:
            self.metrics.load_failures.inc()
            self.metrics.load_failing.set(1)
        kept = f"; still serving run '{self.current.flow_run_name}'" if self.current else ""
        self.problem = f"{exc}{kept}"
        (log.error if failing else log.info)("%s", self.problem)

    def _cut_check(self) -> None:
        log.warning("checking for a newer run of %s took over %g s: cut", self.path.pipeline.name, CHECK_SECONDS)
        kept = f"; still serving run '{self.current.flow_run_name}'" if self.current else ""
        self._cut = (
            f"checking for a newer run did not finish within {CHECK_SECONDS:g} s (the Prefect API, or the "
            f"storage of the run's results, not answering){kept}. Fix: check that both answer"
        )

    def _check_failed(self, exc: BaseException) -> None:
        log.warning("checking for a newer run of %s failed: %r", self.path.pipeline.name, exc)
        self.api_unreachable(exc)

    async def poll(self, interval: float) -> None:
        """`check` every `interval` seconds until cancelled; an API error is logged and
        retried at the next tick (the model in use stays)."""
        check_poll_seconds(interval)
        while True:
            bound = asyncio.timeout(CHECK_SECONDS)  # a storage that never answers held every later check
            try:
                async with bound:
                    await self.check()
                self._cut = None  # a check that ends clears the last one's cut
            except asyncio.CancelledError:
                raise
            except TimeoutError as exc:
                if bound.expired():
                    self._cut_check()
                else:  # a timeout of the check's own (a socket's): as any other failure
                    self._check_failed(exc)
            except Exception as exc:  # the API down for a moment: keep serving, try again
                self._check_failed(exc)
            await asyncio.sleep(interval)
