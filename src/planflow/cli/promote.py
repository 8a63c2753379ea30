"""`planflow promote RUN` and `planflow demote RUN`: a tag on an ended run, for `serve --tag`.

A team serves the runs it has looked at: `planflow serve fraud-risk --tag release` serves
the newest Completed run tagged `release`. A run can be given the tag when it starts
(`prefect deployment run ... --tag release`), but the usual order is the other way round:
a scheduled run ends, someone reads its metrics, then promotes it. Prefect's CLI has no
command that tags a flow run that exists; these commands do it through Prefect's flow
run update (`PATCH /flow_runs/{id}`), and say which run a service with those tags serves
afterwards. Demoting the newest promoted run is the rollback: the services swap back to
the newest run still tagged, at their next poll.

    $ planflow promote crimson-fox
    promoted run 'crimson-fox' (5f0c...) of fraud-risk, ended 2026-12-07 10:21:03 UTC: tags now nightly, release
    `planflow serve fraud-risk --tag release` serves this run (the newest Completed run tagged 'release') ...
"""

from __future__ import annotations

import asyncio
from uuid import UUID

import typer
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterId, FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound

from planflow.cli.common import ensure_server, fail, say
from planflow.serving.loader import ServedRuns, completed_runs

SAME_NAME_SHOWN = 10  # runs listed when a name matches several
NEWER_SHOWN = 10  # the newer runs with the tags that the fix names (to serve the one promoted)


class PromoteError(Exception):
    """What keeps a run from being promoted or demoted, with the fix; `code`: the exit code
    (2 for a bad option, 1 for a run that cannot be)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _tags(given: list[str]) -> tuple[str, ...]:
    tags = tuple(dict.fromkeys(t.strip() for t in given))
    if not tags or any(not t for t in tags):
        raise PromoteError("--tag '': a tag must not be empty. Fix: e.g. --tag release", code=2)
    return tags


async def _find_run(client: PrefectClient, run: str) -> FlowRun:
    """The flow run named or with the id `run`."""
    try:
        run_id = UUID(run)
    except ValueError:
        run_id = None
    if run_id is not None:
        try:
            return await client.read_flow_run(run_id)
        except ObjectNotFound:
            raise PromoteError(
                f"no flow run has the id {run}. Fix: the id or name of a run, e.g. from "
                "`prefect flow-run ls --state-type COMPLETED`"
            ) from None
    found = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run])),
        sort=FlowRunSort.END_TIME_DESC,
        limit=SAME_NAME_SHOWN + 1,
    )
    if not found:
        raise PromoteError(
            f"no flow run is named '{run}'. Fix: the name or id of a run, e.g. from "
            "`prefect flow-run ls --state-type COMPLETED`"
        )
    if len(found) > 1:
        listed = ", ".join(f"{r.id} ({r.state_type.value if r.state_type else '?'})" for r in found[:SAME_NAME_SHOWN])
        raise PromoteError(f"{len(found)} flow runs are named '{run}': {listed}. Fix: name the run by its id")
    return found[0]


async def _pipeline(client: PrefectClient, flow_run: FlowRun) -> str:
    flows = await client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=[flow_run.flow_id])), limit=1)
    return flows[0].name if flows else str(flow_run.flow_id)


def _describe(flow_run: FlowRun, pipeline: str) -> str:
    ended = f", ended {flow_run.end_time:%Y-%m-%d %H:%M:%S} UTC" if flow_run.end_time else ""
    return f"run '{flow_run.name}' ({flow_run.id}) of {pipeline}{ended}"


def _check_servable(flow_run: FlowRun, pipeline: str) -> None:
    """Only a Completed run in process has outputs a service can read (serving/loader.py)."""
    if flow_run.state_type != StateType.COMPLETED:
        state = flow_run.state.name if flow_run.state else "without a state"
        raise PromoteError(
            f"run '{flow_run.name}' ({flow_run.id}) is {state}: only a Completed run is served. Fix: promote a "
            f"Completed run of {pipeline}, e.g. one from `prefect flow-run ls --flow-name {pipeline} "
            "--state-type COMPLETED`"
        )
    if (flow_run.parameters or {}).get("mode") == "distributed":
        raise PromoteError(
            f"run '{flow_run.name}' ({flow_run.id}) ran in distributed mode: its steps' outputs are in flow runs "
            f"of their own, which serving does not read. Fix: promote a run in process (planflow run {pipeline})"
        )


async def _change(run: str, tags: tuple[str, ...], promote: bool) -> list[str]:
    """Add (`promote`) or take away `tags` on `run`; the lines to print."""
    async with get_client() as client:
        flow_run = await _find_run(client, run)
        pipeline = await _pipeline(client, flow_run)
        had = list(flow_run.tags or [])
        if promote:
            _check_servable(flow_run, pipeline)
            now = had + [t for t in tags if t not in had]
        else:
            now = [t for t in had if t not in tags]
        verb = "promoted" if promote else "demoted"
        if now == had:
            said = "already tagged" if promote else "not tagged"
            lines = [f"{_describe(flow_run, pipeline)} is {said} {', '.join(tags)}: nothing changed"]
        else:
            await client.update_flow_run(flow_run.id, tags=now)
            lines = [f"{verb} {_describe(flow_run, pipeline)}: tags now {', '.join(sorted(now)) or '(none)'}"]
        served = ServedRuns(tags=tags)
        newest = await completed_runs(client, pipeline, NEWER_SHOWN, served)
    command = f"`planflow serve {pipeline}{''.join(f' --tag {t}' for t in tags)}`"
    if not newest:
        lines.append(
            f"no Completed run of {pipeline} is tagged {' and '.join(tags)} now: a service started with {command} "
            "keeps the model it serves, and one started now is not ready until a run is promoted"
        )
    elif str(newest[0].id) == str(flow_run.id):
        lines.append(f"{command} serves this run (the newest Completed run{served.describe()}) from its next poll")
    else:
        other = newest[0]
        said = f"{command} serves run '{other.name}' ({other.id}), the newest Completed run{served.describe()}"
        if promote:  # each run so tagged that ended after this one is served before it
            ids = [str(r.id) for r in newest]
            newer = ids[: ids.index(str(flow_run.id))] if str(flow_run.id) in ids else ids
            more = f" (and more: only the newest {len(newer)} are named)" if len(newer) == len(ids) else ""
            said += f", not this one. Fix, to serve this one: {'; '.join(f'planflow demote {i}' for i in newer)}{more}"
        else:
            said += ", from its next poll"
        lines.append(said)
    return lines


def _run(run: str, tag: list[str], promote: bool) -> None:
    ensure_server()
    try:
        lines = asyncio.run(_change(run.strip(), _tags(tag), promote))
    except PromoteError as exc:
        fail(str(exc), exc.code)
    for line in lines:
        say(line)


RUN_HELP = "the flow run: its id, or its name (e.g. crimson-fox, from `prefect flow-run ls`)"
TAG_HELP = "the tag (repeatable), as `planflow serve --tag` names it"


def promote(
    run: str = typer.Argument(..., help=RUN_HELP),
    tag: list[str] = typer.Option(["release"], "--tag", help=TAG_HELP),
) -> None:
    """Tag a Completed run (default tag: release) so that `planflow serve --tag` serves it;
    says which run such a service serves then."""
    _run(run, tag, promote=True)


def demote(
    run: str = typer.Argument(..., help=RUN_HELP),
    tag: list[str] = typer.Option(["release"], "--tag", help=TAG_HELP),
) -> None:
    """Take a tag away from a run (default: release): services with that tag swap back to
    the newest run still carrying it (a rollback)."""
    _run(run, tag, promote=False)
