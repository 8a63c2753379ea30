"""Branch and bound over active schedules: proves small plans (<= ``MAX_TASKS`` tasks) optimal.

Why it is exact.  The serial schedule generation scheme (SGS: each task of a list at its
earliest feasible start, in continuous time) builds every *active* schedule, and some
active schedule is optimal for the makespan.  More precisely, for an active schedule S the
list of its tasks sorted by (start, topological position) rebuilds S through the SGS:
were a task placed earlier than in S, moving it there in S would stay feasible (only
tasks listed before it start before it, and at later times it runs in both), so S would
not be active.  That holds unchanged for pools whose capacity varies over time (steps),
several pools and any mode per task.  Along such a list the starts never decrease, so
the search only follows lists of that kind: a child whose SGS start lies before its
parent's last start, or at the same instant but earlier in topological order, is not
generated (its schedule is reached through another list).  Every schedule the search
skips is therefore either not active or dominated by a lower bound, and when the search
ends without running out of time the incumbent is optimal (to ``TOL``): a proof, not an
estimate.

Bounds at a node whose last task starts at ``s`` (every remaining task starts at or
after ``s``):

* heads and tails: a remaining task starts after ``s``, after its scheduled
  predecessors finish, and after its unscheduled ones could (shortest modes); an
  eligible task also waits until some mode of it fits beside what is scheduled; each
  then needs its tail (shortest modes to the end of the project);
* energy: the remaining tasks' least energy per resource must be supplied after ``s``
  by what the pools have left (capacity minus scheduled tasks and steps), per pool for
  tasks that can only run on it and over all pools together.

A node is also dropped when an earlier node with the same tasks scheduled serves every
completion of it at least as well and comes first in a fixed order (``_dominated``).

Cost is only a tie-break here: the search keeps the incumbent at equal makespan.

Example::

    >>> r = branch_and_bound(inst, incumbent, lower_bound=40.0,        # doctest: +SKIP
    ...                      deadline=time.perf_counter() + 0.5)
    >>> r.proven, r.best.makespan, r.nodes                             # doctest: +SKIP
    (True, 42.5, 311)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .exact_parts import Profile, cliques, covers, filled_by
from .heuristics import priorities
from .instance import Instance
from .sgs import Schedule, add_usage, earliest_start, usage_profiles

EPS = 1e-9
MAX_TASKS = 15  # above this the search rarely ends within a second in pure Python
DOMINANCE_KEEP = 64  # nodes remembered per set of scheduled tasks, for the dominance test
TOL = 1e-9  # relative: a schedule shorter than (1 - TOL) * incumbent would have been found


@dataclass
class ExactResult:
    best: Schedule
    proven: bool  # the search ended: ``best`` is optimal
    nodes: int
    seconds: float
    improved: bool  # ``best`` is shorter than the incumbent it started from
    lower_bound: float  # proven: best.makespan; else the root's bound (valid, weaker)


def applicable(inst: Instance, max_tasks: int = MAX_TASKS) -> bool:
    """Small enough, and no non-renewable budgets (mode choices there are left to the MILP)."""
    return 0 < inst.n <= max_tasks and not any(m.nr for ms in inst.modes for m in ms)


class _OutOfTime(Exception):
    pass


def branch_and_bound(
    inst: Instance, incumbent: Schedule, lower_bound: float, deadline: float, max_nodes: int | None = None
) -> ExactResult:
    """Search for a schedule shorter than ``incumbent``; ``proven`` when the search ended.

    ``lower_bound`` is a valid bound (e.g. :func:`bounds.lower_bounds`): reaching it ends
    the search.  Stops unproven at ``deadline`` (``time.perf_counter()``) or after
    ``max_nodes`` nodes.
    """
    t0 = time.perf_counter()
    search = _Search(inst, incumbent, deadline, max_nodes)
    # the node bound at the root (heads with steps, cliques, energy) is often the optimum
    root = search.root_bound()
    proven = incumbent.makespan <= max(lower_bound, root) + search.tol
    if not proven:
        try:
            search.run()
            proven = True
        except _OutOfTime:
            proven = False
    best = search.best
    return ExactResult(
        best,
        proven,
        search.nodes,
        time.perf_counter() - t0,
        best.makespan < incumbent.makespan - search.tol,
        best.makespan if proven else min(max(lower_bound, root), best.makespan),
    )


class _Search:
    def __init__(self, inst: Instance, incumbent: Schedule, deadline: float, max_nodes: int | None) -> None:
        n = inst.n
        self.inst = inst
        self.n = n
        self.deadline = deadline
        self.max_nodes = max_nodes
        self.nodes = 0
        self.best = incumbent
        self.tol = TOL * max(1.0, incumbent.makespan)
        self.preds = inst.preds
        self.predmask = [sum(1 << p for p in inst.preds[j]) for j in range(n)]
        self.tp = inst.topo_pos
        self.topo = inst.topo
        self.mindur = [inst.min_dur(j) for j in range(n)]
        tail = [0.0] * n  # shortest time from j's start to the end of the project
        for j in reversed(inst.topo):
            tail[j] = self.mindur[j] + max((tail[s] for s in inst.succs[j]), default=0.0)
        self.tail = tail
        self.after = [max((tail[s] for s in inst.succs[j]), default=0.0) for j in range(n)]
        self.lft = priorities(inst).lf
        R = len(inst.resources)
        # per task: (mode, its energy per resource) of each mode
        self.mode_data = [[(m, [m.dur * dict(m.dem).get(k, 0.0) for k in range(R)]) for m in ms] for ms in inst.modes]
        self.R = R
        self.P = len(inst.caps)
        # per clique: its pool's bit, its members' bits, and each member with its flag
        self.cliques = [(1 << p, sum(1 << j for j in c), list(zip(c, o, strict=True))) for p, c, o in cliques(inst)]
        self.nodes_by_mask: dict[int, list[tuple[tuple, list[float], list[Profile]]]] = {}

    def _tick(self) -> None:
        self.nodes += 1
        if self.max_nodes is not None and self.nodes > self.max_nodes:
            raise _OutOfTime
        if self.nodes & 63 == 0 and time.perf_counter() > self.deadline:
            raise _OutOfTime

    def run(self) -> None:
        n = self.n
        self._dfs(0, [0.0] * n, [0.0] * n, [0] * n, usage_profiles(self.inst), 0.0, -1, 0)

    def root_bound(self) -> float:
        return self._bound(0, [0.0] * self.n, usage_profiles(self.inst), 0.0)

    def _dfs(
        self,
        mask: int,
        start: list[float],
        fin: list[float],
        mode: list[int],
        profiles: list[Profile],
        last: float,
        last_tp: int,
        count: int,
    ) -> None:
        self._tick()
        n, inst, tol = self.n, self.inst, self.tol
        if count == n:
            ms = max(fin)
            if ms < self.best.makespan - tol:
                self.best = Schedule(list(start), list(mode), ms)
            return
        if self._dominated(mask, start, fin, profiles, last):
            return
        children = []
        for j in range(n):
            if mask >> j & 1 or self.predmask[j] & ~mask:
                continue
            es = max((fin[p] for p in self.preds[j]), default=0.0)
            for mi, m in enumerate(inst.modes[j]):
                ts, use = profiles[m.pool]
                t = earliest_start(ts, use, inst.caps[m.pool], m.dem, m.dur, es)
                if t < last - EPS or (t <= last + EPS and self.tp[j] < last_tp):
                    continue  # not a sorted list: this schedule is reached through another one
                if t + m.dur + self.after[j] >= self.best.makespan - tol:
                    continue
                children.append((t, j, mi))
        scored = []
        for t, j, mi in children:
            m = inst.modes[j][mi]
            child = list(profiles)
            ts, use = profiles[m.pool]
            ts, use = ts[:], [u[:] for u in use]
            add_usage(ts, use, t, t + m.dur, m.dem)
            child[m.pool] = (ts, use)
            fin_j = fin[j]
            fin[j] = t + m.dur
            lb = self._bound(mask | 1 << j, fin, child, t)
            fin[j] = fin_j
            if lb < self.best.makespan - tol:
                scored.append((lb, t, self.lft[j], j, mi, child))
        scored.sort(key=lambda c: c[:4])
        for lb, t, _, j, mi, child in scored:
            if lb >= self.best.makespan - tol:
                continue  # the incumbent improved meanwhile
            start[j], mode[j], fin[j] = t, mi, t + inst.modes[j][mi].dur
            self._dfs(mask | 1 << j, start, fin, mode, child, t, self.tp[j], count + 1)
        # start/fin/mode of unscheduled tasks are never read, so nothing to restore

    def _dominated(self, mask: int, start: list[float], fin: list[float], profiles: list[Profile], last: float) -> bool:
        """Is there an earlier node A with the same tasks scheduled that does at least as
        well for everything after this node's last start ``last`` (each task finished by
        max(its finish here, last); no more of any pool in use at any time from ``last``
        on) and whose starts come first in the order (exact sum, then the vector)?

        Why pruning is then safe: take the first (in that order) active schedule S
        shorter than the final incumbent; were it cut here, A's part plus S's remaining
        tasks would be feasible, no longer, and first in the order, and so would be its
        left-justified (active) version, which comes before S: a contradiction.  Each
        node is stored (up to DOMINANCE_KEEP per set of tasks), whatever becomes of it."""
        done = [j for j in range(self.n) if mask >> j & 1]
        # fsum is correctly rounded, so the order stays monotone in every start
        key = (math.fsum(start[j] for j in done), tuple(start[j] for j in done))
        ends = [fin[j] for j in done]
        entries = self.nodes_by_mask.setdefault(mask, [])
        for a_key, a_ends, a_profiles in entries:
            if a_key < key and covers(a_ends, a_profiles, ends, profiles, last):
                return True
        if len(entries) < DOMINANCE_KEEP:
            entries.append((key, ends, profiles))
        return False

    def _bound(self, mask: int, fin: list[float], profiles: list[Profile], last: float) -> float:
        """A bound on the makespan of every schedule below this node that beats the
        incumbent (``inf``: none can); as every other schedule is at least the incumbent,
        it is a lower bound on the node as long as it is below the incumbent.

        Earliest start and finish of each remaining task: after ``last``, after its
        predecessors (scheduled: their finish; not yet: their earliest finish), and when
        a mode of it fits beside the scheduled tasks (more tasks only delay that).  A
        mode whose earliest finish plus the task's tail reaches the incumbent cannot be
        part of a better schedule: the clique and energy bounds use the other modes."""
        inst, n = self.inst, self.n
        limit = self.best.makespan - self.tol
        caps, after = inst.caps, self.after
        lb = max((fin[j] for j in range(n) if mask >> j & 1), default=0.0)
        efin = fin[:]  # scheduled: their finish; the others are set (topological order) before use
        est, dur = [0.0] * n, [0.0] * n
        pools = [0] * n  # bit mask of the pools of a task's usable modes
        energy: list[list[float]] = [[]] * n
        for j in self.topo:
            if mask >> j & 1:
                continue
            h = last
            for p in self.preds[j]:
                if efin[p] > h:
                    h = efin[p]
            cut = limit - after[j]  # a mode finishing at or after this is of no use
            f = r = d = float("inf")
            e = None
            bits = 0
            for m, me in self.mode_data[j]:
                md = m.dur
                if h + md >= cut:
                    continue
                ts, use = profiles[m.pool]
                t = earliest_start(ts, use, caps[m.pool], m.dem, md, h)
                if t + md >= cut:
                    continue
                if t < r:
                    r = t
                if t + md < f:
                    f = t + md
                if md < d:
                    d = md
                bits |= 1 << m.pool
                e = me if e is None else [x if x < y else y for x, y in zip(e, me, strict=True)]
            if e is None:
                return float("inf")  # every mode of j ends too late: nothing better here
            efin[j], est[j], dur[j], energy[j], pools[j] = f, r, d, e, bits
            if f + after[j] > lb:
                lb = f + after[j]
        if lb >= limit:
            return lb
        lb = max(lb, self._clique_bound(mask, est, dur, pools))
        if lb >= limit:
            return lb
        return max(lb, self._energy_bound(mask, profiles, last, energy, pools))

    def _clique_bound(self, mask: int, est: list[float], dur: list[float], pools: list[int]) -> float:
        """Tasks of a clique that never overlap run like jobs on one machine with heads
        (earliest starts) and tails: for every head threshold, the tasks starting at or
        after it run one after another: head + their shortest durations + least tail.
        A member counts when it depends on (or is needed by) every other member, or when
        all its usable modes are on the clique's pool (where the members clash)."""
        lb = 0.0
        after = self.after
        for bit, bits, members in self.cliques:
            if (bits & ~mask).bit_count() < 2:
                continue
            rest = [(est[j], dur[j], after[j]) for j, o in members if not mask >> j & 1 and (o or pools[j] == bit)]
            if len(rest) < 2:
                continue
            rest.sort()
            total, least_tail = 0.0, float("inf")
            for r, p, q in reversed(rest):
                total += p
                if q < least_tail:
                    least_tail = q
                if r + total + least_tail > lb:
                    lb = r + total + least_tail
        return lb

    def _energy_bound(
        self, mask: int, profiles: list[Profile], last: float, energy: list[list[float]], pools: list[int]
    ) -> float:
        """Remaining least energy (over usable modes) per resource, supplied after
        ``last`` by what is left: per pool for tasks that can only use that pool, and
        over all pools together."""
        R, P = self.R, self.P
        total = [0.0] * R
        per_pool = [[0.0] * R for _ in range(P)]
        for j in range(self.n):
            if mask >> j & 1:
                continue
            e = energy[j]
            only = pools[j].bit_length() - 1 if pools[j] & (pools[j] - 1) == 0 else -1
            for k in range(R):
                total[k] += e[k]
                if only >= 0:
                    per_pool[only][k] += e[k]
        lb = last
        caps = self.inst.caps
        for k in range(R):
            if total[k] <= EPS:
                continue
            for p in range(P):
                if per_pool[p][k] > EPS:
                    lb = max(lb, filled_by([(profiles[p], caps[p][k])], k, last, per_pool[p][k]))
            lb = max(lb, filled_by([(profiles[p], caps[p][k]) for p in range(P)], k, last, total[k]))
        return lb
