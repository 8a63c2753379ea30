"""The project's block documents: YAML files in its `blocks/` folder that state the
ResourcePool, PlannerSettings and AlertRoute blocks, checked by pydantic models with
`extra="forbid"` (`document_models`) and applied to the Prefect server.

    # blocks/resource-pools.yaml: one YAML document per block
    type: planflow-resource-pool     # the block type slug, as the Prefect UI shows it
    name: docker                     # the block document name
    work_pool: docker
    cpu: machine                     # this machine's cores (`machine` works for gpu, mem_gib too)
    mem_gib: machine
    backup_pool: local

    >>> apply_folder(Path("blocks"))
    ['planflow-alert-route/flow-run-failed: created', ..., 'planflow-resource-pool/docker: unchanged']

Applying makes each named block what its document says (a field left out takes the
block's default, so an edit made in the UI to a block the folder names is undone);
blocks no document names are left alone. Every problem of every file is reported at
once, before anything changes (`BlockDocumentError`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.exceptions import ObjectNotFound

from planflow.prefect.blocks.document_models import BlockDocument, Parsed, parse
from planflow.prefect.blocks.explain import did_you_mean
from planflow.prefect.blocks.registry import register
from planflow.prefect.blocks.resource_pool import ResourcePool
from planflow.prefect.health import ServerNotAnswering, require_server
from planflow.settings import project_root

PATTERNS = ("*.yaml", "*.yml")
POOL_SLUG = ResourcePool.get_block_type_slug()


class BlockDocumentError(ValueError):
    """Block documents that cannot be applied; `problems` lists every one."""

    def __init__(self, folder: Path, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{folder}: {len(problems)} problem(s) in the block documents; nothing was applied:\n{lines}")


def default_folder() -> Path:
    """The current project's `blocks/` folder."""
    return project_root() / "blocks"


def _read_file(path: Path) -> list[Parsed]:
    """Every non-empty YAML document of the file, checked; a YAML syntax error is one problem."""
    loader = yaml.SafeLoader(path.read_text())
    found = []
    try:
        while loader.check_node():
            node = loader.get_node()
            data = loader.construct_document(node)
            if data is not None:
                found.append(parse(f"{path.name}:{node.start_mark.line + 1}", data))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path.name}:{mark.line + 1}" if mark else path.name
        what = getattr(exc, "problem", None) or str(exc)
        found.append(Parsed(where, problems=[f"{where}: not valid YAML: {what}. Fix: correct the YAML there"]))
    finally:
        loader.dispose()
    return found


def _read(folder: Path) -> list[Parsed]:
    if not folder.is_dir():
        problem = f"no folder {folder}. Fix: create it with a YAML file per block type, or name another folder"
        return [Parsed(str(folder), problems=[problem])]
    paths = sorted({path for pattern in PATTERNS for path in folder.glob(pattern)})
    if not paths:
        return [Parsed(str(folder), problems=[f"no block documents (*.yaml) in {folder}. Fix: add e.g. pools.yaml"])]
    parsed = [item for path in paths for item in _read_file(path)]
    first: dict[str, str] = {}
    for item in parsed:
        if item.ref in first:
            item.problems.append(f"{item.source} {item.ref}: stated twice (also at {first[item.ref]}). Fix: keep one")
        elif item.ref:
            first[item.ref] = item.source
    return parsed


def _problems(parsed: list[Parsed]) -> list[str]:
    return [problem for item in parsed for problem in item.problems]


def load_folder(folder: Path) -> list[BlockDocument]:
    """The folder's documents, checked without a server; BlockDocumentError lists every problem."""
    parsed = _read(folder)
    if problems := _problems(parsed):
        raise BlockDocumentError(folder, problems)
    return [item.document for item in parsed if item.document]


@dataclass(frozen=True)
class Change:
    """A document and what the server holds under its name (None: nothing)."""

    document: BlockDocument
    saved: dict[str, Any] | None

    @property
    def differences(self) -> dict[str, tuple[Any, Any]]:
        saved = self.saved or {}
        return {k: (saved.get(k), v) for k, v in self.document.data().items() if saved.get(k) != v}

    @property
    def needed(self) -> bool:
        return self.saved is None or bool(self.differences)

    def describe(self, done: bool) -> str:
        ref = self.document.ref
        if self.saved is None:
            machine = self.document.from_machine
            sized = f" ({', '.join(machine)} from this machine)" if machine else ""
            return f"{ref}: {'created' if done else 'would be created'}{sized}"
        if not self.differences:
            return f"{ref}: unchanged"
        shown = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in self.differences.items())
        return f"{ref}: {'updated' if done else 'would be updated'} ({shown})"


def _saved_pools(client: SyncPrefectClient) -> set[str]:
    try:
        return {doc.name for doc in client.read_block_documents_by_type(POOL_SLUG)}
    except ObjectNotFound:  # the type is not registered yet: no documents
        return set()


def _read_saved(client: SyncPrefectClient, document: BlockDocument) -> dict[str, Any] | None:
    try:
        return client.read_block_document_by_name(document.name, document.slug).data
    except ObjectNotFound:
        return None


def _backup_problems(folder: Path, parsed: list[Parsed], saved_pools: set[str]) -> list[str]:
    """A backup_pool must name a ResourcePool of the folder (even one with other problems) or the server."""
    pools = saved_pools | {item.name for item in parsed if item.slug == POOL_SLUG and isinstance(item.name, str)}
    return [  # of a document with other problems too: all at once
        f"{item.source} {item.ref or '?'}: backup_pool={backup!r} names no ResourcePool in {folder.name}/ or on the "
        f"server.{did_you_mean(backup, pools)} Fix: add its document, or correct the name"
        for item in parsed
        if item.slug == POOL_SLUG and isinstance(backup := item.backup_pool, str) and backup and backup not in pools
    ]


def _plan(folder: Path) -> list[Change]:
    """The change each document needs; every problem (documents and server) raised at once."""
    parsed = _read(folder)
    problems = _problems(parsed)
    try:
        require_server()
    except ServerNotAnswering:
        if problems:  # what is wrong in the files comes first; the server can wait
            raise BlockDocumentError(folder, problems) from None
        raise
    with get_client(sync_client=True) as client:
        problems += _backup_problems(folder, parsed, _saved_pools(client))
        if problems:
            raise BlockDocumentError(folder, problems)
        return [Change(item.document, _read_saved(client, item.document)) for item in parsed if item.document]


def plan_folder(folder: Path) -> list[str]:
    """What `apply_folder` would do, one line per block; changes nothing."""
    return [change.describe(done=False) for change in _plan(folder)]


def apply_folder(folder: Path) -> list[str]:
    """Create or update the blocks the folder's documents state (idempotent); one line
    per block. Raises BlockDocumentError (every problem; nothing applied) or
    planflow.prefect.health.ServerNotAnswering."""
    changes = _plan(folder)
    if any(change.needed for change in changes):
        register()
    for change in changes:
        if change.needed:
            change.document.block.save(change.document.name, overwrite=True)
    return [change.describe(done=True) for change in changes]
