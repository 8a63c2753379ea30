"""Component durations (and peak memory, where measured) learned from earlier runs.

Each completed component leaves one record made for it on the Prefect server: an
artifact of type `planflow-history` under the key
`planflow-history-<component>-<code version>`, whose data is one observation

    {"component": "train", "code_version": "3f2a...", "pool": "local", "seconds": 2.1,
     "peak_mem_gib": null, "work": {"n_rows": 200000}, "pipeline": "fraud-risk",
     "flow_run_id": "..."}

Why artifacts: any process or machine reads them through the Prefect API, they survive
a server restart, they are append-only (two runs finishing the same component at once
each add their own version, nothing is read, changed and written back, so nothing is
lost), and they are kept when a flow run is deleted (an artifact's flow run is a plain
column, not a cascading key). The UI shows them under Artifacts.

The key carries the component's code version (a hash of its source), so a component
whose code changed starts again from its declaration instead of being planned at what
the old code took. Parameters that change the work (`scales_with` on the component) are
recorded with each observation; durations are converted to the run being planned by
the ratio of the work factors (duration taken as proportional to each parameter).
"""

from __future__ import annotations

import contextvars
import math
import statistics
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, ArtifactFilterType
from prefect.client.schemas.sorting import ArtifactSort

from planflow.core.component import Component
from planflow.core.pipeline import Pipeline

MIN_SECONDS = 0.05  # a plan needs positive durations; sub-50 ms steps round up to this
HISTORY_TYPE = "planflow-history"
HISTORY_KEY_PREFIX = "planflow-history"
KEY_MAX = 100  # Prefect's limit on an artifact key's length
PAGE = 200  # the most records one read asks for (Prefect's default PREFECT_API_DEFAULT_LIMIT)
MAX_PAGES = 10  # pages of one read of many versions' records before a version short of them reads alone
WRITE_THREADS = 8  # history records written side by side
# Inside `read_once()`: observations read once per key (the plan's durations and memory
# figures read the same records; without it, one request per step before each plan).
_reads: contextvars.ContextVar[dict[str, tuple[list[Observation], bool]] | None] = contextvars.ContextVar(
    "planflow_history_reads", default=None
)


@dataclass(frozen=True)
class Estimate:
    """A component's duration on one pool, and where the figure came from."""

    seconds: float
    source: str  # "declared" | "declared for this pool" | "history: median of N runs" (+ scaling)


@dataclass(frozen=True)
class Observation:
    """One completed run of one component: what the history stores."""

    component: str
    code_version: str
    pool: str
    seconds: float
    peak_mem_gib: float | None = None
    work: Mapping[str, float] | None = None
    pipeline: str = ""
    flow_run_id: str | None = None
    # Where the step ran: in process, "thread" or "process" (runtime/isolation.py); "flow-run"
    # (distributed mode: a child flow run, its start-up included) or "dask" (a Dask task);
    # None: a record written before it was kept.
    isolation: str | None = None

    def to_data(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "code_version": self.code_version,
            "pool": self.pool,
            "seconds": self.seconds,
            "peak_mem_gib": self.peak_mem_gib,
            "work": dict(self.work or {}),
            "pipeline": self.pipeline,
            "flow_run_id": self.flow_run_id,
            **({"isolation": self.isolation} if self.isolation else {}),
        }


def artifact_slug(text: str) -> str:
    """Lowercase letters, digits and dashes: the form Prefect accepts in artifact keys."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def history_key(component: str, code_version: str) -> str:
    """`planflow-history-<component>-<code version>` (the name cut to fit Prefect's limit)."""
    room = KEY_MAX - len(HISTORY_KEY_PREFIX) - len(code_version) - 2
    return f"{HISTORY_KEY_PREFIX}-{artifact_slug(component)[:room].strip('-')}-{code_version}"


def work_values(pipeline: Pipeline, step: str, params: Mapping[str, Any]) -> dict[str, float]:
    """The values this run gives the step's `scales_with` parameters: a pipeline
    parameter it is bound to, a value fixed for the step, or the function's default.
    A parameter fed by another step's output has no value before the run (left out)."""
    spec = pipeline.steps[step].spec
    values: dict[str, float] = {}
    for name in spec.scales_with:
        binding = pipeline.bindings[step].get(name)
        if binding is None or binding.kind == "step":
            continue
        value = params.get(binding.source) if binding.kind == "param" else binding.source
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[name] = float(value)
    return values


def record(observation: Observation) -> None:
    """Add one observation to the history (one artifact version; never overwrites)."""
    record_many([observation])


def record_many(batch: Iterable[Observation]) -> None:
    """Add observations to the history: one artifact version per component version (its
    data one observation, or `{"observations": [...]}` for several), written side by side."""
    groups: dict[str, list[Observation]] = {}
    for observation in batch:
        if not observation.seconds > 0:
            raise ValueError(
                f"history of '{observation.component}': seconds={observation.seconds!r} must be > 0 "
                "(a component that did not run has no duration to learn)"
            )
        groups.setdefault(history_key(observation.component, observation.code_version), []).append(observation)
    if not groups:
        return
    if len(groups) == 1:
        _create(*next(iter(groups.items())))
        return
    with ThreadPoolExecutor(max_workers=min(WRITE_THREADS, len(groups))) as pool:
        futures = [pool.submit(contextvars.copy_context().run, _create, k, g) for k, g in groups.items()]
    for future in futures:
        future.result()


def _create(key: str, group: list[Observation]) -> None:
    first = group[0]
    _remember_per_record(key, len(group))
    if len(group) == 1:
        data: dict[str, Any] = first.to_data()
        said = f"on {first.pool}: {first.seconds:.2f} s"
    else:
        data = batch_data([o.to_data() for o in group])
        said = f"{len(group)} runs, {min(o.seconds for o in group):.2f}-{max(o.seconds for o in group):.2f} s"
    with get_client(sync_client=True) as client:
        client.create_artifact(
            ArtifactCreate(
                key=key,
                type=HISTORY_TYPE,
                data=data,
                description=f"{first.component} (code {first.code_version}) {said}; planflow's duration history, "
                "read by the planner",
                flow_run_id=first.flow_run_id,
            )
        )


@contextmanager
def read_once(store: dict[str, Any] | None = None) -> Iterator[None]:
    """Within this block (and the threads started in copies of its context), each
    component version's history is read from the server once. `store`: the reads kept by
    another block (early_reads.py: read before the run's body), taken as this block's."""
    token = _reads.set(store if store is not None else {} if _reads.get() is None else _reads.get())
    try:
        yield
    finally:
        _reads.reset(token)


def observations(component: Component, limit: int) -> list[Observation]:
    """The newest `limit` observations of this version of `component` (newest first)."""
    key = history_key(component.name, component.code_version)
    return observations_of({key: component}, limit)[key]


def observations_of(components: Mapping[str, Component], limit: int) -> dict[str, list[Observation]]:
    """Per history key, the newest `limit` observations of each component version in
    `components` (key -> component), newest first: one read for them all (a plan read
    them one request each: 96 reads in a fleet burst of 8 runs), in pages newest first
    across the versions still short of `limit` (_records), until each has `limit` or none
    is left (at most MAX_PAGES: a Dask-mode run of 400 components, each with a few
    records, read the versions one request each, 2-4 s before its first component); a
    version still short after MAX_PAGES reads alone."""
    found = {key: seen for key in components if (seen := _cached(key, limit)) is not None}
    unread = [key for key in components if key not in found]
    if not unread:
        return found
    with get_client(sync_client=True) as client:
        by_key, complete = _records(client, unread, limit)
        for key in unread if len(unread) > 1 else []:
            if not complete[key] and _count_all(by_key[key]) < limit:  # pages ran out: it reads alone
                alone, done = _records(client, [key], limit)
                by_key[key], complete[key] = alone[key], done[key]
    for key in unread:
        found[key] = _keep(key, _observed(components[key], by_key[key]), complete[key])[:limit]
    return found


def _records(client: Any, keys: list[str], limit: int) -> tuple[dict[str, list[Any]], dict[str, bool]]:
    """The newest history records of `keys` holding `limit` observations each (or all
    there are), newest first per key, read in at most MAX_PAGES pages, each asking only
    for the versions still short and for as many records as they need (_page_size; at
    least twice the page before, so that a short guess costs few pages); per key, whether
    every record of it there is was read."""
    by_key: dict[str, list[Any]] = {key: [] for key in keys}
    have = dict.fromkeys(keys, 0)  # observations read per key
    complete = dict.fromkeys(keys, False)
    seen_ids: set[Any] = set()  # a record created meanwhile shifts the pages: one may come twice
    size = 0
    for _ in range(MAX_PAGES):
        short = [key for key in keys if have[key] < limit]
        if not short:
            break
        per_record = {key: have[key] / len(by_key[key]) for key in short if by_key[key]}
        size = max(_page_size({key: limit - have[key] for key in short}, per_record), min(PAGE, 2 * size))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=short), type=ArtifactFilterType(any_=[HISTORY_TYPE])
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=size,
            # the newest records of these versions were read (records of other versions
            # read before do not count); a record created meanwhile comes again, skipped
            offset=sum(len(by_key[key]) for key in short),
        )
        dropped = set()
        for artifact in artifacts:  # newest first, across the versions
            key = artifact.key or ""
            if key not in have or artifact.id in seen_ids:
                continue
            if have[key] >= limit:
                dropped.add(key)
                continue
            seen_ids.add(artifact.id)
            count = _count(artifact)
            if not by_key[key]:
                _remember_per_record(key, count)
            by_key[key].append(artifact)
            have[key] += count
        if len(artifacts) < size:  # every record of these versions was read
            complete.update((key, key not in dropped) for key in short)
            break
    return by_key, complete


# Per history key, the observations in its newest record this process wrote or read: a run
# whose steps share a component records them all in one record (400 in a run of 400 steps),
# so a read of `limit` records (200 per page) moved megabytes for 20 observations.
_per_record: dict[str, int] = {}
PER_RECORD_KEYS = 10_000  # versions remembered before the memory starts again


def _remember_per_record(key: str, count: int) -> None:
    if len(_per_record) >= PER_RECORD_KEYS and key not in _per_record:
        _per_record.clear()
    _per_record[key] = max(1, count)


def _page_size(wanted: Mapping[str, int], per_record: Mapping[str, float]) -> int:
    """Records enough for `wanted` (key -> observations still wanted) at each version's
    observations per record: as this read found them (`per_record`), else as this process
    last saw its newest record, else one record (the next page is sized by what it held),
    so that a first read of batch records asks for one each."""
    need = sum(math.ceil(n / (per_record.get(key) or _per_record.get(key, n))) for key, n in wanted.items())
    return max(1, min(PAGE, need))


def _count(artifact: Any) -> int:
    """The observations in one history record (a batch's, else one)."""
    data = artifact.data if isinstance(artifact.data, dict) else {}
    batch = data.get("observations")
    return len(batch) if isinstance(batch, list) else 1


def _count_all(artifacts: Iterable[Any]) -> int:
    return sum(_count(artifact) for artifact in artifacts)


def _cached(key: str, limit: int) -> list[Observation] | None:
    """The observations of `key` read inside this `read_once()` block, when they answer for `limit`."""
    reads = _reads.get()
    if reads is not None and key in reads:
        seen, complete = reads[key]  # complete: every record there is was read
        if complete or len(seen) >= limit:
            return seen[:limit]
    return None


def _keep(key: str, found: list[Observation], complete: bool) -> list[Observation]:
    reads = _reads.get()
    if reads is not None:
        reads[key] = (found, complete)
    return found


# Fields every observation of a batch shares are stated once, beside the list (a run of 400
# steps sharing a component repeated its name, code version, pipeline and run 400 times: a
# record of 94 KB, 34 KB without); a batch's item inherits them (older batches list them all).
BATCH_SHARED = ("component", "code_version", "pipeline", "flow_run_id")


def batch_data(items: list[dict[str, Any]]) -> dict[str, Any]:
    """One record of several observations (`items`, each `Observation.to_data()`): the fields
    of BATCH_SHARED that they all hold alike stated once, the items keeping the rest."""
    shared = {f: items[0].get(f) for f in BATCH_SHARED if all(item.get(f) == items[0].get(f) for item in items)}
    return {**shared, "observations": [{k: v for k, v in item.items() if k not in shared} for item in items]}


def _observed(component: Component, artifacts: Iterable[Any]) -> list[Observation]:
    found = []
    for artifact in artifacts:
        data = artifact.data if isinstance(artifact.data, dict) else {}
        batch = data.get("observations")
        if isinstance(batch, list):  # newest last
            shared = {f: data[f] for f in BATCH_SHARED if f in data}
            items = [{**shared, **item} if isinstance(item, dict) else item for item in reversed(batch)]
        else:
            items = [data]
        found += [o for item in items if (o := _parse(component, item)) is not None]
    return found


def _parse(component: Component, data: Any) -> Observation | None:
    if not isinstance(data, dict):
        return None
    seconds, pool = data.get("seconds"), data.get("pool")
    if not (isinstance(seconds, (int, float)) and seconds > 0 and isinstance(pool, str) and pool):
        return None
    work = data.get("work") if isinstance(data.get("work"), dict) else {}
    peak = data.get("peak_mem_gib")
    return Observation(
        component=component.name,
        code_version=component.code_version,
        pool=pool,
        seconds=float(seconds),
        peak_mem_gib=float(peak) if isinstance(peak, (int, float)) else None,
        work={k: float(v) for k, v in work.items() if isinstance(v, (int, float))},
        pipeline=str(data.get("pipeline") or ""),
        flow_run_id=data.get("flow_run_id"),
        isolation=data.get("isolation") if data.get("isolation") in RAN_AS else None,
    )


RAN_AS = ("thread", "process", "flow-run", "dask")
_RAN_IN_MODE = {"distributed": "flow-run", "dask": "dask"}


def ran_as(pipeline: Pipeline, step: str, mode: str) -> str:
    """Where `step` runs in a run of `mode`: its isolation in process ("thread" or
    "process"), a child flow run ("flow-run", distributed) or a Dask task ("dask")."""
    return _RAN_IN_MODE.get(mode) or pipeline.isolation_of(step)


def recent_durations(
    pipeline: Pipeline, runs: int, params: Mapping[str, Any] | None = None, mode: str = "inprocess"
) -> dict[tuple[str, str], list[float]]:
    """Per (step, pool), the seconds of the last `runs` completed runs of the step's
    current code version (newest first), each converted to the work of a run with
    `params` (default: the pipeline's defaults). A run learns only from runs where the
    step ran as it will now (`ran_as`): in a thread or in a process of its own (a
    CPU-bound Python step shares the interpreter lock in a thread: its times there say
    little of its times alone), as a child flow run (seconds of start-up each: a
    distributed run planned from in-process times was due in 5 s and took 38) or as a
    Dask task; records that do not say where count for all."""
    params = pipeline.resolve_params(params, require=False)  # a plan without a required one: at its reference
    read = read_history(pipeline, runs)
    durations: dict[tuple[str, str], list[float]] = {}
    for name, step in pipeline.steps.items():
        spec = step.spec
        now = spec.work_factor(work_values(pipeline, name, params))
        isolation = ran_as(pipeline, name, mode)
        for seen in read[history_key(step.component.name, step.component.code_version)]:
            if seen.isolation is not None and seen.isolation != isolation:
                continue
            then = spec.work_factor(seen.work or {})
            if then == 0 and now != 0:  # a run of no work says nothing of a run with some
                continue
            samples = durations.setdefault((name, seen.pool), [])
            if len(samples) < runs:
                samples.append(seen.seconds * (now / then if then else 1.0))
    return durations


def read_history(pipeline: Pipeline, runs: int) -> dict[str, list[Observation]]:
    """Per history key, the observations of each component version of `pipeline`, enough
    for `runs` runs on each pool it ran on: one request for them all (observations_of;
    steps often share a component: one read per step, then per version, put server round
    trips before the plan)."""
    components = {history_key(s.component.name, s.component.code_version): s.component for s in pipeline.steps.values()}
    return observations_of(components, max(1, runs) * 4)  # a component may have run on several pools


def work_scale(pipeline: Pipeline, params: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Per step, its work factor in a run with `params` (1.0 without `scales_with`; a
    REQUIRED parameter not given counts as its reference: a listing has no run's values)."""
    params = pipeline.resolve_params(params, require=False)
    return {name: step.spec.work_factor(work_values(pipeline, name, params)) for name, step in pipeline.steps.items()}


def estimate(
    declared: float,
    declared_for_pool: bool,
    history: Mapping[tuple[str, str], list[float]],
    step: str,
    pool: str,
    scale: float = 1.0,
) -> Estimate:
    """The median of recent actual durations when there are any (already converted to
    this run's work), else the declaration times the work factor `scale`."""
    samples = history.get((step, pool), [])
    if samples:
        runs = len(samples)
        return Estimate(
            max(MIN_SECONDS, statistics.median(samples)),
            f"history: median of {runs} run{'s' if runs > 1 else ''}",
        )
    source = "declared for this pool" if declared_for_pool else "declared"
    if scale != 1.0:
        source += f", x{scale:.3g} for its work parameters"
    return Estimate(max(MIN_SECONDS, declared * scale), source)
