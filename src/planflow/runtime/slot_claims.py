"""A step that keeps being refused its slots claims them as they come free.

Runs take a pool's shared slots all or nothing, so that no two runs each hold part of
what they wait for (they would wait for each other for ever). That alone starves a wide
step: a component that needs both cores of a pool waits while the other runs' one-core
steps take each core the moment it frees, for as long as they have steps (the fleet
benchmark saw a `cpu=2` step ready at 33 s start at 113 s, its run planned first and
finishing last).

So a refused step takes its pool's **turn** at once when it comes first in the pool
calendar's order among the components waiting for the pool (RunSlots.first_on),
else after YIELD_SECONDS (after CLAIM_AFTER_SECONDS for a run without a calendar). The
turn is a concurrency limit of one slot per pool (`planflow-<pool>-turn`, made with the
pool's other limits). While a step holds it, it takes every slot it still misses as soon
as it is free, and keeps it, and the other runs take nothing new on that pool. Only the
turn's holder holds part of what it waits for, so nobody waits for each other in a
circle; the slots others give back come to it, so it starts once the steps running when
it claimed have ended. When it has all it needs it starts and gives the turn back. The
turn and the slots claimed are leases like every other: a run that dies gives them back
within the lease.

    claims = Claims(owner)           # owner: the run's RunSlots
    held = claims.advance(a)         # a _Held when the claim is complete, else None
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from planflow.prefect.limits import turn_limit
from planflow.runtime.dispatch import Assignment

if TYPE_CHECKING:
    from planflow.runtime.run_leases import Lease
    from planflow.runtime.run_slots import RunSlots

CLAIM_AFTER_SECONDS = 2.0  # a step refused this long takes its pool's turn (runs without a calendar)
YIELD_SECONDS = 30.0  # a step refused this long claims even though a component before it waits
TURN_LOOK_SECONDS = 1.0  # how long a look at a pool's turn stands (one read per pool at most this often)
CLAIM_POLL_SECONDS = 0.15  # how often a claiming step looks for freed slots (RunSlots.poll_seconds)


@dataclass
class _Claim:
    step: str
    turn: Lease
    leases: list[Lease] = field(default_factory=list)
    forced: bool = False  # taken for having waited (YIELD_SECONDS, CLAIM_AFTER_SECONDS), not for its place

    def has(self, limit: str) -> int:
        """Slots of `limit` claimed so far."""
        return sum(lease.slots for lease in self.leases if lease.limit == limit)


class Claims:
    """The claims of one run's steps, at most one per pool."""

    def __init__(self, owner: RunSlots, limits: Mapping[str, Any] | None = None) -> None:
        """`limits`: the server's limits as the run read them before its plan (their turns
        stand for the run's first look)."""
        self.owner = owner
        self._by_pool: dict[str, _Claim] = {}
        self._turns: dict[str, tuple[float, bool]] = {}  # pool -> (when looked, taken)
        self._first_look = (time.monotonic(), limits or {})

    def blocked(self, a: Assignment) -> bool:
        """Another step claims `a`'s pool: `a` takes nothing there meanwhile, so that the
        slots the running steps give back go to the claim."""
        if self.holds(a):
            return False
        if a.pool in self._by_pool:  # another step of this run claims it
            return True
        if a.pool not in self._turns and (seen := self._first_look[1].get(turn_limit(a.pool))) is not None:
            self._turns[a.pool] = (self._first_look[0], seen.active_slots > 0)
        looked, taken = self._turns.get(a.pool, (-1e9, False))
        if time.monotonic() - looked >= TURN_LOOK_SECONDS:
            # a look that stands while this machine's runs announce turns taken and given
            # back, shared with them (RunSlots.limit_now woken): 8 runs looking once a second
            # each read it 305 times in a fleet burst
            seen = self.owner.limit_now(turn_limit(a.pool), woken=True)
            taken = seen is not None and seen.active_slots > 0
            self._turns[a.pool] = (time.monotonic(), taken)
        return taken

    def forget_turn(self, pool: str) -> None:
        """The pool's turn was given back: the next look reads it again (called from the
        wake-up listener's thread; one dict operation)."""
        self._turns.pop(pool, None)

    @property
    def claiming(self) -> bool:
        """A step of this run claims a pool."""
        return bool(self._by_pool)

    def holds(self, a: Assignment) -> bool:
        """`a` claims its pool's slots (it holds the turn)."""
        claim = self._by_pool.get(a.pool)
        return claim is not None and claim.step == a.step

    def due(self, a: Assignment, refused_since: float) -> bool:
        """`a` may claim: no other step of the run claims that pool, and no other run's
        component waiting for the pool comes before it in the calendar's order (the
        owner's `first_on`), or it has been refused for YIELD_SECONDS all the same (a
        calendar that says so for long is likely stale). Without a calendar (`first_on`
        None) the pool's order is unknown: it claims once refused for CLAIM_AFTER_SECONDS.
        (A step that claims after a short wait while one before it waits takes the turn
        from it: the fleet benchmark saw a one-core step of the run planned first,
        ready with a core free, wait 20 s behind later runs' claims for two cores; with 10 s,
        a later run's claim took the cores freed for the first run's two-core step.)"""
        if a.pool in self._by_pool:
            return False
        waited = time.monotonic() - refused_since
        first_on = self.owner.first_on
        if first_on is None:
            return waited >= CLAIM_AFTER_SECONDS
        return first_on(a.pool, a.step) or waited >= YIELD_SECONDS

    def yields(self, a: Assignment) -> bool:
        """`a` claims its pool, and another run's component that comes before it in the
        calendar's order now waits there: `a` gives the turn and the slots it claimed back
        (it claims again when it is first, or forced once refused for YIELD_SECONDS), so
        that a claim begun while nothing before it waited does not hold that component
        back until the claim is complete. A forced claim does not yield."""
        claim = self._by_pool.get(a.pool)
        first_on = self.owner.first_on
        if claim is None or claim.forced or first_on is None or first_on(a.pool, a.step):
            return False
        del self._by_pool[a.pool]
        self._turns[a.pool] = (time.monotonic(), False)
        self.owner._drop([claim.turn, *claim.leases], here=False)  # to the server: that component may be elsewhere
        self.owner.log.info(
            "step '%s' gives its claim on pool '%s' back: another run's component before it waits there", a.step, a.pool
        )
        return True

    def advance(self, a: Assignment) -> list[tuple[Lease, int]] | None:
        """Take the pool's turn if nobody holds it, then whatever `a` still misses that is
        free now; the step's shares once it has all it needs (the turn given back)."""
        claim = self._by_pool.get(a.pool)
        if claim is None:
            turn = self.owner._increment(turn_limit(a.pool), 1, quiet=True)
            if turn is None:  # another run's step holds the turn (or an old server lacks it)
                self._turns[a.pool] = (time.monotonic(), True)
                return None
            self.owner._use(turn, 1)
            first_on = self.owner.first_on
            forced = first_on is None or not first_on(a.pool, a.step)
            claim = self._by_pool[a.pool] = _Claim(a.step, turn, forced=forced)
            if first_on is None:
                why = "no pool calendar"
            elif forced:
                why = "after a long wait, though another run's component before it waits"
            else:
                why = "first in the pool's order"
            self.owner.log.info(
                "step '%s' waits for its slots on pool '%s': it claims them as they come free (%s)", a.step, a.pool, why
            )
        wanted = self.owner.wanted(a)
        for name, n in wanted.items():
            for lease in self.owner._adopt(name, n - claim.has(name)):  # left by this machine's other runs
                self.owner._use(lease, lease.slots)
                claim.leases.append(lease)
            missing = n - claim.has(name)
            free = min(missing, self._free(name)) if missing > 0 else 0
            if free > 0 and (lease := self.owner._increment(name, free, quiet=True)) is not None:
                self.owner._use(lease, free)  # the claim's: no other step of the run takes it
                claim.leases.append(lease)
        if any(claim.has(name) < n for name, n in wanted.items()):
            return None
        del self._by_pool[a.pool]
        self.owner._drop_later(claim.turn)  # off the step's path: it starts now
        self._turns[a.pool] = (time.monotonic(), False)  # its own turn, being given back: free for this run
        return [(lease, lease.slots) for lease in claim.leases]

    def _free(self, name: str) -> int:
        """Slots of limit `name` nobody holds now (one read)."""
        limit = self._read(name)
        return max(0, limit.limit - limit.active_slots) if limit is not None else 0

    def _read(self, name: str) -> Any:
        """Limit `name` as the run read it this round (one read per limit and round)."""
        return self.owner.limit_now(name)
