"""List scheduling: priority rules, mode choices within the non-renewable budgets, and the
search over activity lists (forward-backward improvement on every schedule and a small
genetic algorithm), on the schedule builders of sgs.py (serial SGS, FBI), whose names
are importable from here too.

Why these pieces: CALIBRATION.md measured single-pass serial SGS at 2-10 % above the j30
optimum and the best of 12 passes at ~2 %; the literature (Kolisch & Hartmann 2006) gets to
~0.1 % only with improvement methods, so :func:`improve` runs FBI on every schedule and a
genetic algorithm (Hartmann 1998 two-point crossover on activity lists, adjacent-swap
mutation, Lamarckian FBI on every child) for a time/schedule budget.

Example::

    >>> from planner.instance import compile_problem
    >>> inst = compile_problem(problem)            # doctest: +SKIP
    >>> best = improve(inst, deadline=time.perf_counter() + 0.5)  # doctest: +SKIP
    >>> best.makespan                               # doctest: +SKIP
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .instance import Instance
from .sgs import EPS, Schedule, fbi, order_of, serial_sgs

__all__ = [
    "EPS",
    "HeuristicResult",
    "Priorities",
    "Schedule",
    "biased_random_list",
    "fbi",
    "improve",
    "initial_modes",
    "list_by_key",
    "nr_feasible",
    "order_of",
    "priorities",
    "repair_modes",
    "rule_lists",
    "serial_sgs",
]


# ----------------------------------------------------------------------------- priorities
@dataclass
class Priorities:
    es: list[float]
    ls: list[float]
    lf: list[float]
    mts: list[int]
    grpw: list[float]
    cp: float


def priorities(inst: Instance) -> Priorities:
    """Time windows with shortest modes, no resources; ES/LS/LF plus MTS and GRPW values."""
    n = inst.n
    d = [inst.min_dur(j) for j in range(n)]
    es = [0.0] * n
    for j in inst.topo:
        for p in inst.preds[j]:
            es[j] = max(es[j], es[p] + d[p])
    cp = max((es[j] + d[j] for j in range(n)), default=0.0)
    lf = [cp] * n
    reach = [0] * n
    for j in reversed(inst.topo):
        for s in inst.succs[j]:
            lf[j] = min(lf[j], lf[s] - d[s])
            reach[j] |= reach[s] | (1 << s)
    ls = [lf[j] - d[j] for j in range(n)]
    mts = [r.bit_count() for r in reach]
    grpw = [d[j] + sum(d[s] for s in inst.succs[j]) for j in range(n)]
    return Priorities(es, ls, lf, mts, grpw, cp)


def list_by_key(inst: Instance, key: Callable[[int], object]) -> list[int]:
    """Precedence-feasible list: repeatedly take the eligible task with the smallest key."""
    indeg = [len(p) for p in inst.preds]
    heap = [(key(j), inst.topo_pos[j], j) for j in range(inst.n) if indeg[j] == 0]
    heapq.heapify(heap)
    out: list[int] = []
    while heap:
        _, _, j = heapq.heappop(heap)
        out.append(j)
        for s in inst.succs[j]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(heap, (key(s), inst.topo_pos[s], s))
    return out


def biased_random_list(inst: Instance, pr: Priorities, rng: random.Random) -> list[int]:
    """Regret-based biased random sampling on LFT (Drexl 1991), alpha = 1."""
    indeg = [len(p) for p in inst.preds]
    elig = [j for j in range(inst.n) if indeg[j] == 0]
    out: list[int] = []
    while elig:
        worst = max(pr.lf[j] for j in elig)
        w = [worst - pr.lf[j] + 1.0 for j in elig]
        i = rng.choices(range(len(elig)), weights=w)[0]
        j = elig[i]
        elig[i] = elig[-1]
        elig.pop()
        out.append(j)
        for s in inst.succs[j]:
            indeg[s] -= 1
            if indeg[s] == 0:
                elig.append(s)
    return out


def rule_lists(inst: Instance, pr: Priorities) -> dict[str, list[int]]:
    return {
        "LFT": list_by_key(inst, lambda j: pr.lf[j]),
        "LST": list_by_key(inst, lambda j: pr.ls[j]),
        "MTS": list_by_key(inst, lambda j: -pr.mts[j]),
        "GRPW": list_by_key(inst, lambda j: -pr.grpw[j]),
    }


# ----------------------------------------------------------------------------- non-renewables
def nr_feasible(inst: Instance, modes: Sequence[int]) -> bool:
    if not inst.nr_names:
        return True
    use = [0.0] * len(inst.nr_names)
    for j, mi in enumerate(modes):
        for k, a in inst.modes[j][mi].nr:
            use[k] += a
    return all(u <= c + EPS for u, c in zip(use, inst.nr_caps, strict=True))


def _nr_excess(inst: Instance, modes: Sequence[int]) -> float:
    use = [0.0] * len(inst.nr_names)
    for j, mi in enumerate(modes):
        for k, a in inst.modes[j][mi].nr:
            use[k] += a
    return sum(max(0.0, u - c) / max(c, 1.0) for u, c in zip(use, inst.nr_caps, strict=True))


def repair_modes(inst: Instance, modes: list[int], rng: random.Random, max_steps: int = 200) -> list[int] | None:
    """Greedy repair of a mode assignment violating non-renewable budgets (None if stuck)."""
    modes = list(modes)
    ex = _nr_excess(inst, modes)
    steps = 0
    while ex > EPS and steps < max_steps:
        steps += 1
        best = None
        for j in range(inst.n):
            for i in range(len(inst.modes[j])):
                if i == modes[j]:
                    continue
                old = modes[j]
                modes[j] = i
                e = _nr_excess(inst, modes)
                modes[j] = old
                k = (e, inst.modes[j][i].dur - inst.modes[j][old].dur, rng.random())
                if best is None or k < best[0]:
                    best = (k, j, i)
        if best is None or best[0][0] >= ex - EPS:
            return None
        ex = best[0][0]
        modes[best[1]] = best[2]
    return modes if ex <= EPS else None


def initial_modes(inst: Instance, rng: random.Random, count: int) -> list[list[int]]:
    """Up to ``count`` distinct non-renewable-feasible assignments (empty if none found)."""
    out: list[list[int]] = []
    shortest = [min(range(len(ms)), key=lambda i: ms[i].dur) for ms in inst.modes]
    cands = [shortest]
    for _ in range(count * 3):
        cands.append([rng.randrange(len(ms)) for ms in inst.modes])
    for c in cands:
        m = c if nr_feasible(inst, c) else repair_modes(inst, c, rng)
        if m is not None and m not in out:
            out.append(m)
        if len(out) >= count:
            break
    return out


# ----------------------------------------------------------------------------- improvement
@dataclass
class HeuristicResult:
    best: Schedule
    best_order: list[int]
    schedules: int  # number of SGS passes done
    single_pass_best: float  # best makespan of the plain priority-rule passes (no FBI)
    rule_makespans: dict[str, float]


def _better(inst: Instance, a: Schedule, b: Schedule | None) -> bool:
    return b is None or a.key(inst) < b.key(inst)


def improve(
    inst: Instance,
    deadline: float,
    lower_bound: float = 0.0,
    max_schedules: int = 5000,
    seed: int = 0,
    fixed_modes: list[list[int]] | None = None,
    pop_size: int = 50,
    seed_lists: list[tuple[list[int], list[int] | None]] | None = None,
    stall_limit: int | None = None,
) -> HeuristicResult:
    """Multi-pass SGS with priority rules + FBI, then a GA until deadline/budget/bound.

    ``fixed_modes``: candidate mode assignments (needed when non-renewable budgets exist;
    the GA then also mutates modes).  None means modes are chosen greedily inside SGS.
    Stops early once the best makespan reaches ``lower_bound``, or after ``stall_limit``
    schedules without a shorter makespan.
    """
    rng = random.Random(seed)
    pr = priorities(inst)
    count = 0
    best: Schedule | None = None
    best_order: list[int] = []
    rules = rule_lists(inst, pr)
    mode_sets: list[list[int] | None] = list(fixed_modes) if fixed_modes else [None]
    pop: list[tuple[Schedule, list[int], list[int] | None]] = []
    single = float("inf")
    rule_ms: dict[str, float] = {}

    last_gain = 0  # schedule count at the last improvement of the best makespan

    def done() -> bool:
        return (
            (best is not None and best.makespan <= lower_bound + EPS)
            or time.perf_counter() >= deadline
            or count >= max_schedules
            or (stall_limit is not None and count - last_gain >= stall_limit)
        )

    def evaluate(order: list[int], modes: list[int] | None) -> tuple[Schedule, list[int]]:
        nonlocal count, best, best_order, last_gain
        s = serial_sgs(inst, order, modes)
        s2, o2 = fbi(inst, s)
        count += 3  # one pass + (typically) one backward/forward round
        if best is None or s2.makespan < best.makespan - EPS:
            last_gain = count
        if _better(inst, s2, best):
            best, best_order = s2, o2
        return s2, o2

    # Plain priority-rule passes (the calibrated baseline), then FBI on each.
    for name, lst in rules.items():
        if best is not None and time.perf_counter() >= deadline:
            break  # huge problems: one rule + FBI may already use the whole budget
        for ms in mode_sets[:3]:
            s = serial_sgs(inst, lst, ms)
            rule_ms[name] = min(rule_ms.get(name, float("inf")), s.makespan)
            single = min(single, s.makespan)
            s2, o2 = fbi(inst, s)
            count += 3
            if _better(inst, s2, best):
                best, best_order = s2, o2
            pop.append((s2, o2, ms))
    if done():
        assert best is not None
        return HeuristicResult(best, best_order, count, single, rule_ms)
    for order, ms in seed_lists or []:  # e.g. the incumbent of an earlier phase
        s, o = evaluate(list(order), ms)
        pop.append((s, o, ms))
    # Biased random sampling fills the population.
    while len(pop) < pop_size and not done():
        ms = rng.choice(mode_sets)
        s, o = evaluate(biased_random_list(inst, pr, rng), ms)
        pop.append((s, o, ms))
    # Genetic algorithm.
    pred_set = [set(p) for p in inst.preds]
    multi_mode = fixed_modes is not None and any(len(m) > 1 for m in inst.modes)
    stale, last = 0, best.makespan if best else float("inf")

    def sig(s: Schedule) -> tuple[float, ...]:
        return tuple(s.start)

    def dedup(items):
        # Copies of one schedule crowd the population and kill diversity (the main reason
        # a plain GA stalls on hard j30 instances): keep one of each.
        seen: set[tuple[float, ...]] = set()
        out = []
        for it in items:
            k = sig(it[0])
            if k not in seen:
                seen.add(k)
                out.append(it)
        return out

    while not done():
        pop.sort(key=lambda x: x[0].key(inst))
        pop = dedup(pop)[:pop_size]
        # Restart on stagnation (the population converges to copies of one list): keep the
        # best few, refill by biased random sampling.
        if best is not None and best.makespan < last - EPS:
            stale, last = 0, best.makespan
        else:
            stale += 1
        if stale >= 15:
            stale = 0
            pop = pop[:3]
            while len(pop) < pop_size and not done():
                ms = rng.choice(mode_sets)
                s, o = evaluate(biased_random_list(inst, pr, rng), ms)
                pop.append((s, o, ms))
        children = []
        for _ in range(max(2, pop_size // 2)):
            if done():
                break
            a = pop[min(rng.randrange(len(pop)), rng.randrange(len(pop)))]
            b = pop[min(rng.randrange(len(pop)), rng.randrange(len(pop)))]
            child = _crossover(a[1], b[1], rng)
            _mutate(child, pred_set, rng, 0.05)
            if rng.random() < 0.5:
                _shift(child, inst, rng)
            cm = a[2]
            if multi_mode and a[2] is not None and b[2] is not None:
                cut = rng.randrange(inst.n + 1)
                cm2 = a[2][:cut] + b[2][cut:]
                for j in range(inst.n):
                    if rng.random() < 0.05:
                        cm2[j] = rng.randrange(len(inst.modes[j]))
                if not nr_feasible(inst, cm2):
                    # Tight budgets make most random changes infeasible: repair greedily
                    # instead of discarding the new modes.
                    cm2 = repair_modes(inst, cm2, rng, max_steps=inst.n) or a[2]
                cm = cm2
            s, o = evaluate(child, cm)
            children.append((s, o, cm))
        pop.extend(children)
    assert best is not None
    return HeuristicResult(best, best_order, count, single, rule_ms)


def _crossover(mother: list[int], father: list[int], rng: random.Random) -> list[int]:
    """Two-point crossover keeping precedence feasibility (Hartmann 1998)."""
    n = len(mother)
    q1 = rng.randrange(n + 1)
    q2 = rng.randrange(q1, n + 1)
    child = mother[:q1]
    taken = set(child)
    for j in father:
        if len(child) >= q2:
            break
        if j not in taken:
            child.append(j)
            taken.add(j)
    for j in mother:
        if j not in taken:
            child.append(j)
            taken.add(j)
    return child


def _mutate(lst: list[int], pred_set: list[set[int]], rng: random.Random, p: float) -> None:
    for i in range(len(lst) - 1):
        if rng.random() < p and lst[i] not in pred_set[lst[i + 1]]:
            lst[i], lst[i + 1] = lst[i + 1], lst[i]


def _shift(lst: list[int], inst: Instance, rng: random.Random) -> None:
    """Move one activity to a random position between its last predecessor and its first
    successor in the list (keeps precedence feasibility; a bigger step than a swap)."""
    n = len(lst)
    if n < 3:
        return
    i = rng.randrange(n)
    j = lst[i]
    pos = {a: k for k, a in enumerate(lst)}
    lo = max((pos[p] for p in inst.preds[j]), default=-1) + 1
    hi = min((pos[q] for q in inst.succs[j]), default=n)  # exclusive, in the original list
    del lst[i]
    if hi > i:
        hi -= 1
    if lo > i:
        lo -= 1
    lst.insert(rng.randint(lo, max(lo, hi)), j)
