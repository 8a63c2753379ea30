"""A run's shared slots, taken in few server round trips (admission.py, for one whole run).

SharedSlots.take asks the server for each step's slots (one increment per limit), keeps a
renewal thread per lease (each renews at once: one more request) and gives them back
when the step ends, all on the dispatcher's thread: for short components those round
trips cost more than the components. RunSlots keeps the same guarantee - every slot a
running step uses is held on the server, so runs together never exceed a pool's
capacity - with fewer requests:

- **Batches.** Before each dispatch round the dispatcher names the steps it is about to
  release (`prepare`); the slots of those planned to be short (at most BATCH_SECONDS)
  are taken in one increment per limit, as one lease, and shared out to them.
- **Reuse.** A step's slots go back to the run's leases when it ends; the next steps of
  the same run take them from there. Leases no step of the next round needs are given
  back at the start of that round (a run holds idle slots only between two rounds of
  its dispatcher), and all of them when the run ends.
- **Off the path.** Leases are given back by a thread of their own (the last ones too:
  the run's Completed state does not wait for them) and renewed by one thread for the
  whole run (every lease_seconds/4, each lease when half its time is up).
- **Read before asking again.** An increment is a write: on SQLite it takes the one
  write lock, refused or not, and queues behind (and holds up) every run's task-state
  writes. A limit that refused this run in the last CONTENDED_SECONDS is read first
  (`free_now`: at most one read per limit per dispatcher round; while this machine's runs
  announce to each other the slots they take and give back, with their counts, a read
  stands 1 s, kept up to date by what they announce), and asked only when the read says
  enough is free. In a burst of 8 runs on 2 cores,
  about 57 % of 867 increments were refused (the fleet benchmark, counted at the server).

- **Handed over here.** A lease of a pool's cpu, memory or gpu given back is first left
  for this machine's other runs (spare_leases.py): one that misses slots of that limit
  takes it over without a request, and the lease goes back to the server only when
  nobody took it within LINGER_SECONDS.

A lease shared by a batch is given back when its last step ends: a batch-mate that ended
early keeps its slots held until then, at most about BATCH_SECONDS; other runs may wait
that much longer, never less safe.

    with RunSlots() as slots:          # the dispatcher's admit; prepare() before each round
        dispatch(..., admit=slots)
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from typing import Any

import httpx
from prefect.client.orchestration import get_client

from planflow.prefect.limits import pool_limits_now, turn_limit
from planflow.runtime import shared_reads, spare_leases
from planflow.runtime.admission import LOCKED, AdmissionError, SharedSlots
from planflow.runtime.dispatch import Assignment
from planflow.runtime.run_leases import CLOSE_SECONDS, Lease, RunLeases
from planflow.runtime.shared_reads import LimitSeen
from planflow.runtime.slot_claims import CLAIM_POLL_SECONDS, Claims
from planflow.runtime.slot_wake import SlotWake

logger = logging.getLogger("planflow.admission")
BATCH_SECONDS = 10.0  # steps planned at most this long share one lease with their batch
SEEN_SECONDS = 0.1  # a limit read stands this long (limit_now), about one dispatcher round
# ... and this long while runs on this machine wake this one when they give slots back
# (slot_wake.py): a give-back here makes the read stale at once, so only slots freed by
# another machine's runs or an expired lease wait for it (runs asked at every 0.25 s round)
SEEN_WOKEN_SECONDS = 1.0
SIZE_CHECK_SECONDS = 5.0  # a waiting step's limits are checked this often to fit its demand at all (_wait_more)
CONTENDED_SECONDS = 10.0  # a limit that refused the run this recently is read before it is asked (_contended)
# a run this old checks, at most this often per limit, that a limit it reuses held slots of
# was not made smaller meanwhile (_made_smaller): the most a pool runs over its new size
REUSE_CHECK_SECONDS = 5.0
UNKNOWN_FREE = 1 << 30  # free_now of a limit it could not read: ask, and let the increment say why


class NoRead:
    """No read at hand (RunSlots._kept_read): a request is needed to know."""


NO_READ = NoRead()


class _RefusedThisRound(Exception):
    """The server refused as many slots of this limit earlier in the dispatcher's round."""


class _MadeSmaller(Exception):
    """Limits whose held slots a step would reuse now hold fewer than are taken of them."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(", ".join(names))
        self.names = names


class _Held:
    """One step's share of the run's leases; closing it returns the share to them."""

    def __init__(self, owner: RunSlots, shares: list[tuple[Lease, int]]) -> None:
        self.owner, self.shares = owner, shares

    def close(self) -> None:
        shares, self.shares = self.shares, []
        self.owner._give_back(shares)

    def __enter__(self) -> _Held:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class RunSlots(RunLeases, SharedSlots):
    """The dispatcher's `admit` for one run: call it (or `take`) with an assignment for
    its held slots, or None while other runs hold them; `prepare` before each round."""

    def __init__(
        self,
        batch_seconds: float = BATCH_SECONDS,
        limits: Mapping[str, Any] | None = None,
        log: logging.Logger | logging.LoggerAdapter | None = None,
        first_on: Callable[[str, str], bool] | None = None,
        on_refused: Callable[[str], None] | None = None,
        **options: Any,
    ) -> None:
        """`limits`: the server's limits as the run read them before its plan, if it did;
        `log`: where claims and faults are said (the run's log, seen in the UI);
        `first_on(pool, step)`: whether the step comes first in its pool's order among the
        components waiting for it (the pool calendar's, pool_order.PoolOrder.first_on): it
        claims at once; `on_refused(step)`: told the name of each step refused its slots
        (or yielding to a claim), for the calendar to mark it waiting
        (pool_order.PoolOrder.waiting). Without them (no calendar) the pool's order is
        unknown: a refused step claims after CLAIM_AFTER_SECONDS."""
        super().__init__(**options)
        self.log = log or logger
        self.batch_seconds = batch_seconds
        self._threads: list[threading.Thread] = []
        self.reads = 0  # limits read before asking again (limit_now)
        self.reads_shared = 0  # ... and taken from another run's read on this machine instead (shared_reads.py)
        # per limit, the fewest slots the server refused this round: a step that misses as
        # many waits without asking (a run with nine ready steps on a full pool asked nine
        # times every POLL_SECONDS, and several such runs kept a small server busy)
        self._round_refused: dict[str, int] = {}
        self._size_checked: dict[str, float] = {}  # step -> when its limits were last checked to fit it at all
        self._began = time.monotonic()
        self._reuse_checked: dict[str, float] = {}  # limit -> when its size was last checked before a reuse
        self._claims = Claims(self, limits)
        # each limit's size, as read before the plan: a batch never asks for more (the
        # server answers 422 to a request larger than its limit, however free it is)
        self._sizes = {name: int(limit.limit) for name, limit in (limits or {}).items()}
        self._closing: threading.Thread | None = None  # gives back the last leases after the run (__exit__)
        self.first_on = first_on
        self.on_refused = on_refused
        # limit -> pool, for the limits this round's refused steps wait for (their pool's turn
        # too): slots of one given back on this machine wake the dispatcher (slot_wake.py)
        self._wanting: dict[str, str] = {}
        self._wake_dispatcher: Callable[[], None] | None = None
        # limit name -> (read started, as read, answered) this round (limit_now)
        self._seen: dict[str, tuple[float, Any, float]] = {}
        self._seen_woken: dict[str, tuple[float, Any, float]] = {}  # the same, for reads that stand longer (woken)
        self._hearing_since = float("inf")  # when its listener began hearing this machine's runs (__enter__)
        self._changes = shared_reads.HeardChanges()  # slots taken and given back on this machine, heard

    @property
    def poll_seconds(self) -> float:
        """The dispatcher's pace while a step waits: faster while a step of this run claims
        a pool (its turn holds the other runs back: each moment a freed core waits for the
        claim's next look, it waits idle; one run per pool claims at a time)."""
        claims = getattr(self, "_claims", None)
        if claims is not None and claims.claiming:
            return min(CLAIM_POLL_SECONDS, self._poll_seconds)
        return self._poll_seconds

    @poll_seconds.setter
    def poll_seconds(self, seconds: float) -> None:
        self._poll_seconds = seconds

    # -- a run ----------------------------------------------------------------------------
    def __enter__(self) -> RunSlots:
        self._client = get_client(sync_client=True).__enter__()
        self._wake = SlotWake(self._freed, self._taken, self._spare)
        self._hands_over = self._wake.path is not None
        self._hearing_since = time.time()  # what was announced before is unknown to it: no older shared read
        for target, name in ((self._releaser, "planflow-slot-release"), (self._renewer, "planflow-slot-renew")):
            thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        with self._lock:
            leases, self._leases = self._leases, []
        self._releases.put(None)
        self._stop.set()
        client, self._client = self._client, None
        # Off the run's path: on a busy server (SQLite writing the run's task states) giving
        # back takes 0.2-0.3 s, and the run would wait for it before its Completed state.
        # The slots stay held that much longer, never less safe; not a daemon thread, so a
        # process that ends (a worker's flow run) gives them back first.
        wake, self._wake = self._wake, None
        closing = threading.Thread(
            target=contextvars.copy_context().run, args=(self._close, leases, client, wake), name="planflow-slot-close"
        )
        closing.start()
        self._closing = closing

    def wait_closed(self, timeout: float = CLOSE_SECONDS) -> bool:
        """Wait until the run's last slots were given back (tests, a caller that must see
        the pool free); False when `timeout` ran out first."""
        closing = self._closing
        if closing is not None:
            closing.join(timeout)
        return closing is None or not closing.is_alive()

    def _close(self, leases: list[Lease], client: Any, wake: SlotWake | None) -> None:
        if wake is not None:
            wake.close()
        # the last leases side by side (one request each), not one after another on the releaser
        self._release_all(leases, warn_when="at the run's end")
        for thread in self._threads:
            thread.join(CLOSE_SECONDS)
            if thread.is_alive():
                logger.warning(
                    "%s did not end within %g s; the slots still held return when their leases run out",
                    thread.name,
                    CLOSE_SECONDS,
                )
        # the leases left for this machine's other runs that none took over: back to the server
        with self._lock:
            last = max((spare.left for spare in self._left), default=0.0)
        time.sleep(max(0.0, min(last + spare_leases.LINGER_SECONDS - time.time(), spare_leases.LINGER_SECONDS)))
        self._take_back_left(everything=True)
        if client is not None:
            client.__exit__(None, None, None)
        if not any(thread.is_alive() for thread in self._threads):  # a releaser still at work keeps its threads
            self._threads_pool.shutdown(wait=False)

    def __call__(self, a: Assignment) -> _Held | None:
        held = self.take(a)
        if held is None:
            for name in (*self.wanted(a), turn_limit(a.pool)):
                self._wanting[name] = a.pool
            if self.on_refused is not None:
                self.on_refused(a.step)
        return held

    def wake_with(self, wake: Callable[[], None]) -> None:
        """The dispatcher's call to ask again at once (dispatch.py): made when slots a
        refused step waits for are given back on this machine."""
        self._wake_dispatcher = wake

    def _taken(self, limit: str, slots: int | None = None) -> None:
        """`slots` slots of `limit` were taken on this machine (slot_wake.py): counted into
        this run's reads of it (limit_now); a read begun before is stale when the count is
        unknown."""
        if slots is None:
            self._changed_at[limit] = time.time()
        else:
            self._changes.heard(limit, slots)

    def _freed(self, limit: str, slots: int | None = None) -> None:
        """`slots` slots of `limit` were given back (slot_wake.py's listener thread)."""
        if slots is None:
            self._changed_at[limit] = time.time()  # a read of it begun before is stale (limit_now)
        else:
            self._changes.heard(limit, -slots)
        self._spare(limit)

    def _spare(self, limit: str) -> None:
        """A lease of `limit` was left here to be taken over (or its slots given back): a
        step waiting for it asks at once."""
        pool = self._wanting.get(limit)
        if pool is None:
            return
        if limit == turn_limit(pool):  # the pool's claim ended: look at its turn again at once
            self._claims.forget_turn(pool)
        wake = self._wake_dispatcher
        if wake is not None:
            wake()

    # -- the dispatcher's hooks -------------------------------------------------------------
    def prepare(self, ready: Iterable[Assignment]) -> None:
        """The steps the dispatcher is about to release: keep idle leases they can use,
        give back the others, and take the short steps' missing slots as one lease per limit."""
        # a new round: what was refused may be free now (SharedSlots._surely_refused, per round)
        previous, self._round_refused = self._round_refused, {}
        self._wanting = {}
        self._seen = {}  # the claims' reads: again this round, if needed
        # a claimed pool's steps take nothing; a claiming step takes its slots as they come free
        ready = [a for a in ready if not (self._claims.holds(a) or self._claims.blocked(a))]
        needed: dict[str, int] = {}
        batched: dict[str, int] = {}
        for a in ready:
            short = a.planned_start is not None and a.planned_finish is not None
            short = short and a.planned_finish - a.planned_start <= self.batch_seconds
            for name, n in self.wanted(a).items():
                needed[name] = needed.get(name, 0) + n
                if short:
                    batched[name] = batched.get(name, 0) + n
        free: dict[str, int] = {}
        with self._lock:
            for lease in list(self._leases):
                if lease.users == 0 and free.get(lease.limit, 0) >= needed.get(lease.limit, 0):
                    self._leases.remove(lease)
                    self._releases.put(lease)
                else:
                    free[lease.limit] = free.get(lease.limit, 0) + lease.free
        for name, n in batched.items():  # what leases this machine's other runs left cover: the steps take them over
            free[name] = free.get(name, 0) + self._coverable(name, n - free.get(name, 0))
        missing = [(name, n - free.get(name, 0)) for name, n in batched.items() if n > free.get(name, 0)]
        # no batch of a limit that refused a single step last round: the steps ask one by one
        missing = [(name, n) for name, n in missing if n < previous.get(name, n + 1)]
        with self._lock:  # at most what the limit has beside the run's own leases
            room = {
                name: size - sum(x.slots for x in self._leases if x.limit == name) for name, size in self._sizes.items()
            }
        missing = [(name, min(n, room.get(name, n))) for name, n in missing if room.get(name, n) > 0]
        if any(self._looks_short(name, n) for name, n in missing):
            return  # all or none: a batch that would be refused is not asked for (the steps ask one by one)
        # A limit that refused this run lately is asked first, alone, and the others only once
        # it granted: side by side, the memory a fleet burst's batches asked for beside their
        # refused cores was granted and given back at once (336 memory increments granted
        # against 72 of cores in one burst, as many decrements).
        lately = {name for name, _ in missing if self._contended(name)}
        leases: list[Lease | None] = []
        for name, n in missing:
            if name in lately:
                leases.append(self._increment(name, n, quiet=True))
                if leases[-1] is None:
                    break
        else:
            leases += self._increment_side_by_side([(name, n) for name, n in missing if name not in lately])
        if any(lease is None for lease in leases):  # all or none: no run holds part of what it waits for
            self._drop([lease for lease in leases if lease is not None], here=False)  # granted just now

    def _increment_side_by_side(self, asked: list[tuple[str, int]]) -> list[Lease | None]:
        """One increment per limit (quiet), side by side: a server round trip each."""
        if len(asked) <= 1:
            return [self._increment(name, n, quiet=True) for name, n in asked]
        futures = [
            self._threads_pool.submit(contextvars.copy_context().run, self._increment, name, n, True, True)
            for name, n in asked
        ]
        return [future.result() for future in futures]

    def take(self, a: Assignment) -> _Held | None:
        now = time.monotonic()
        since = self._waiting_since.setdefault(a.step, now)
        if self._claims.holds(a):  # it claims its slots as they come free (slot_claims.py)
            if self._claims.yields(a):  # unless a component before it in the pool's order now waits
                return self._wait_more(a, now, since)
            return self._claim(a, now, since)
        if self._claims.blocked(a):  # another step claims the pool: nothing new taken there
            self._give_back_idle(self.wanted(a))
            return self._wait_more(a, now, since)
        shares: list[tuple[Lease, int]] = []
        taken: list[Lease] = []  # leases the server granted this call: given back when it fails
        adopted: list[Lease] = []  # ... and leases it took over here: left here again
        asking = ("", 0)  # the limit and slots of the last increment sent
        try:
            missing: dict[str, int] = {}
            for name, n in self.wanted(a).items():
                # what the run's own leases have free first (a step that needs more than any
                # one of them holds, e.g. the whole pool after a one-core step, must not ask
                # the server for all of it while the run itself holds part: it never fits)
                got = self._gather(name, n)
                shares += got
                missing[name] = n - sum(k for _, k in got)
            # Leases this machine's other runs left cover what they can; the server is asked
            # for the rest first, and they are taken over only once it granted all (taken over
            # first, a step refused another limit put them back at every look: 1,500-2,300
            # times in a run of a fleet burst).
            covered = {name: self._coverable(name, m) for name, m in missing.items()}
            asked_at = time.time()  # one read of the pool answers for all its limits (_made_smaller)
            shrunk = [
                name for name, m in missing.items() if m - covered[name] <= 0 and self._made_smaller(name, asked_at)
            ]
            if shrunk:
                raise _MadeSmaller(shrunk)
            for name, m in missing.items():
                asking = (name, m - covered[name])
                self._ask(a, *asking, taken, shares)
            for name, m in covered.items():
                leases = self._adopt(name, m)
                adopted += leases
                shares += [self._use(lease, lease.slots) for lease in leases]
                asking = (name, m - sum(lease.slots for lease in leases))  # another run took some first
                self._ask(a, *asking, taken, shares)
        except (httpx.HTTPStatusError, _RefusedThisRound) as exc:
            self._give_back(shares)  # all or none
            self._undo(taken, adopted)
            if isinstance(exc, httpx.HTTPStatusError):
                if exc.response.status_code != LOCKED:
                    # a limit made smaller than the step's demand (422: "greater than the
                    # limit") is named as the size check names it, not as the raw answer
                    problem = self._never_fits(a)
                    refused = f"step '{a.step}': the Prefect server refused its slots: {exc}"
                    raise AdmissionError(problem or refused) from None
                self._refused_this_round(*asking)
            self._give_back_idle(self.wanted(a))
            self._server_down_since = None
            if self._claims.due(a, since):  # refused for long, and the pool's turn is free: claim
                return self._claim(a, now, since)
            return self._wait_more(a, now, since)
        except _MadeSmaller as smaller:
            self._give_back(shares)
            self._undo(taken, adopted)
            return self._after_made_smaller(a, smaller.names, now, since)
        except httpx.TransportError as exc:
            self._give_back(shares)
            self._undo(taken, adopted)
            return self._server_down(a, exc, now)
        except BaseException:
            self._give_back(shares)
            self._undo(taken, adopted)
            raise
        self._waiting_since.pop(a.step, None)
        self._server_down_since = None
        return _Held(self, shares)

    def _made_smaller(self, name: str, read_after: float) -> bool:
        """Whether limit `name` now holds fewer slots than are taken of it: made smaller since
        they were (`planflow pools set` to fewer cores, the UI). Its held slots were reused
        without asking the server, so a run planned before the change ran its next steps
        over the pool's new size. Read (limit_now) once the run is REUSE_CHECK_SECONDS old,
        at most that often per limit: nothing for a short run. Only a read begun after
        `read_after` says (one request reads the pool's limits together). A failed read says no."""
        now = time.monotonic()
        if now - self._began < REUSE_CHECK_SECONDS or now - self._reuse_checked.get(name, -1e9) < REUSE_CHECK_SECONDS:
            return False
        self._reuse_checked[name] = now
        self._changed_at[name] = max(self._changed_at.get(name, -1.0), read_after)  # an older read does not say
        try:
            seen = self.limit_now(name, woken=True)
        except httpx.HTTPError:
            return False
        return seen is not None and seen.active_slots > seen.limit

    def _after_made_smaller(self, a: Assignment, names: list[str], now: float, since: float) -> None:
        """`a` would have reused slots of limits now smaller than what is taken: the run's idle
        slots of them go back to the server (not left for this machine's runs: they would
        reuse them too), and `a` asks the server for its own from now on, which refuses it
        while the pool is over its new size; a step larger than the new size fails."""
        self._give_back_idle(names, here=False)
        problem = self._never_fits(a)
        if problem:
            raise AdmissionError(problem) from None
        self.log.warning(
            "step '%s': limit(s) %s now hold fewer slots than are taken (made smaller since they were): "
            "the run gave its idle ones back and waits for the server's",
            a.step,
            ", ".join(names),
        )
        return self._wait_more(a, now, since)

    def _ask(self, a: Assignment, name: str, n: int, taken: list[Lease], shares: list[tuple[Lease, int]]) -> None:
        """Ask the server for `n` more slots of limit `name` for step `a` (none when `n` is
        0), adding the lease to `taken` and its share to `shares`; _RefusedThisRound when as
        many were refused this round or a read says they are not free, an HTTP error as met."""
        if n <= 0:
            return
        if n >= self._round_refused.get(name, n + 1):
            raise _RefusedThisRound(name)
        if self._looks_short(name, n):
            self._refused_this_round(name, n)
            raise _RefusedThisRound(name)
        lease = self._increment(name, n)
        if lease is None:
            raise AdmissionError(
                f"step '{a.step}': pool '{a.pool}' has no concurrency limit '{name}'. "
                "Fix: planflow pools sync (or planflow blocks apply)"
            )
        taken.append(lease)
        shares.append(self._use(lease, n))

    def _claim(self, a: Assignment, now: float, since: float) -> _Held | None:
        """One step of `a`'s claim: its slots once it has them all, else None (bounded by the
        same wait as any step's; a server error is met again at the next look)."""
        self._give_back_idle(self.wanted(a))  # the run's own idle slots: free on the server, for the claim
        try:
            shares = self._claims.advance(a)
        except httpx.HTTPError as exc:
            self.log.warning("step '%s': its claim on pool '%s' goes on at the next look (%s)", a.step, a.pool, exc)
            shares = None
        if shares is not None:
            self._waiting_since.pop(a.step, None)
            return _Held(self, shares)
        return self._wait_more(a, now, since)

    def _wait_more(self, a: Assignment, now: float, since: float) -> None:
        """As SharedSlots', and a step that can never start fails at once: a limit made smaller
        than its demand since the plan (by hand in the UI, `prefect gcl update`) kept it
        waiting the whole wait, saying only that it claims slots as they come free."""
        if now - self._size_checked.get(a.step, since) >= SIZE_CHECK_SECONDS:
            self._size_checked[a.step] = now
            problem = self._never_fits(a)
            if problem:
                raise AdmissionError(problem) from None
        super()._wait_more(a, now, since)

    def _never_fits(self, a: Assignment) -> str | None:
        """Why `a` can never start, when one of its limits now holds less than it needs in
        all (made smaller since the plan); None when each holds enough or is unknown now."""
        for name, n in self.wanted(a).items():
            try:
                seen = self.limit_now(name, woken=True)
            except httpx.HTTPError:
                continue  # unknown now: looked at again later
            if seen is not None and seen.limit < n:
                return (
                    f"step '{a.step}' needs {n} slots of limit {name}, but the limit now holds "
                    f"{seen.limit} in all: it can never start. The limit was changed since the run "
                    f"was planned (by hand, or pool '{a.pool}' was resized). Fix: planflow pools sync "
                    f"(the limits back to the ResourcePool blocks), or planflow pools set {a.pool} "
                    "--cpu N --mem-gib N, then run again"
                )
        return None

    # -- what the server holds ----------------------------------------------------------------
    def _refused_this_round(self, name: str, missing: int) -> None:
        """`missing` slots of `name` were refused (or read as not free) this round: steps of
        the round that miss as many wait without asking."""
        self._round_refused[name] = min(missing, self._round_refused.get(name, missing))

    def _looks_short(self, name: str, n: int) -> bool:
        """Fewer than `n` slots of limit `name` are free, as read: asking would be refused
        (a write for nothing, queued for SQLite's write lock). Read afresh when the limit
        refused this run lately (`_contended`); else only a read at hand counts (one kept
        up to date by this machine's announced counts, or another run's as fresh), and
        without one the increment asks. A read at hand errs towards free (what the run
        heard while it was on its way counts as given back); what it does not hear (other
        machines' runs, leases that ran out) waits at most SEEN_WOKEN_SECONDS, when the
        read is no longer at hand and the increment asks."""
        if self._contended(name):
            return self.free_now(name) < n
        if not self._hears_counts():
            return False
        at_hand = self._kept_read(name, woken=True)
        return isinstance(at_hand, LimitSeen) and at_hand.limit - at_hand.active_slots < n

    def _contended(self, name: str) -> bool:
        """Limit `name` refused this run within CONTENDED_SECONDS: the pool is busy, so a
        read comes before each increment. (Until the next grant only, as before, a step's
        first ask after each grant was refused whenever other runs waited too: 230 of 581
        increments in a fleet burst, each queued for SQLite's write lock, 0.97 s in flight
        on average against 0.06 s for a read.)"""
        refused = self._refused_at.get(name)
        return refused is not None and time.monotonic() - refused < CONTENDED_SECONDS

    def free_now(self, name: str) -> int:
        """Slots of limit `name` nobody holds, as last read (limit_now). A limit that does not
        exist, or a read that failed, counts as free: the increment that follows meets it
        and reports it."""
        try:
            limit = self.limit_now(name, woken=True)
        except httpx.HTTPError:  # unknown: the increment meets the fault and reports it
            limit = None
        return max(0, int(limit.limit) - int(limit.active_slots)) if limit is not None else UNKNOWN_FREE

    def _kept_read(self, name: str, woken: bool = False) -> LimitSeen | None | NoRead:
        """Limit `name` as a read at hand says, without a request (limit_now's rules): this
        run's own, or another run's on this machine as fresh (None: the limit does not
        exist, as read); NO_READ when there is none."""
        counted = self._hears_counts()
        woken = woken or counted
        cache = self._seen_woken if woken else self._seen
        stands = SEEN_WOKEN_SECONDS if counted else SEEN_SECONDS  # counted: it hears this machine's runs
        fresh_after = max(time.time() - stands, self._changed_at.get(name, -1.0))
        seen = cache.get(name)
        if seen is not None and seen[0] > fresh_after:
            return self._changes.up_to_date(name, seen) if counted else seen[1]
        # another run's read, begun once this run heard every change announced here
        shared = shared_reads.load(name, max(fresh_after, self._hearing_since)) if self._wake is not None else None
        if shared is not None:
            self.reads_shared += 1
            cache[name] = shared
            return self._changes.up_to_date(name, shared) if counted else shared[1]
        return NO_READ

    def limit_now(self, name: str, woken: bool = False) -> LimitSeen | None:
        """Limit `name` as last read (None: it does not exist), read again when that read is
        older than SEEN_SECONDS or this dispatcher round, or began before the limit changed
        as far as this run knows (this run's refusal; slots of it given back or taken here
        when the count was not said). `woken`: a read that only decides whether to ask
        again stands SEEN_WOKEN_SECONDS while this run hears this machine's takes and
        give-backs (a look at a pool's turn too). While it hears them with their counts
        (slot_wake.py), every read stands that long, the claims' too, brought up to date by
        what it heard since (shared_reads.HeardChanges): only what other machines' runs
        did, or leases that ran out, waits for the next read. A read another run on this
        machine made that is as fresh is taken instead of asking the server (shared_reads.py)."""
        kept = self._kept_read(name, woken)
        if not isinstance(kept, NoRead):
            return kept
        started = time.time()
        client = self._client
        self.reads += 1
        # the pool's other limits come with it (one request): a round that reads the pool's
        # memory reads its cores and its turn next
        with nullcontext(client) if client else get_client(sync_client=True) as client:
            found = {
                n: LimitSeen(int(limit.limit), int(limit.active_slots))
                for n, limit in pool_limits_now(client, name).items()
            }
        answered = time.time()
        found.setdefault(name, None)  # None: it does not exist
        for other, read in found.items():
            for kept in (self._seen, self._seen_woken):
                if other == name or kept.get(other, (-1e9,))[0] < started:
                    kept[other] = (started, read, answered)
            if self._wake is not None:
                shared_reads.store(other, started, read, answered)
        return found[name]
