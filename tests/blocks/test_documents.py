"""Block documents (YAML in a project's blocks/ folder) checked and applied to the real
session server: idempotent apply, every problem listed at once, and the repository's own
blocks/ folder stating the framework's defaults."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from planflow.prefect.blocks import AlertRoute, PlannerSettings, ResourcePool, local_pool_from_machine
from planflow.prefect.blocks.alert_route import DEFAULT_ROUTES, default_route, route_name
from planflow.prefect.blocks.documents import BlockDocumentError, apply_folder, load_folder, plan_folder
from planflow.prefect.health import ServerNotAnswering
from planflow.prefect.workpools import KUBERNETES_EXAMPLE

REPO_BLOCKS = Path(__file__).resolve().parents[2] / "blocks"
SLUGS = ("planflow-resource-pool", "planflow-planner-settings", "planflow-alert-route")

POOLS = """\
    type: planflow-resource-pool
    name: docs-a
    work_pool: docs-a
    cpu: 2
    mem_gib: 4
    backup_pool: local
    ---
    type: planflow-resource-pool
    name: docs-b
    work_pool: docs-b
    cpu: machine
    gpu: machine
    mem_gib: machine
    cost_per_hour: 1.5
    backup_pool: docs-a
"""
SETTINGS = """\
    type: planflow-planner-settings
    name: default
    solver: cbc
    time_limit_s: 7
"""
ROUTES = """\
    type: planflow-alert-route
    name: planflow-docs-test-alert
    alertname: PlanflowDocsTestAlert
    action: none
    max_attempts: 4
"""


def write(folder: Path, **files: str) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(dedent(text))
    return folder


def saved(slug: str) -> dict[str, dict]:
    """Every document of a block type on the server: name -> data."""
    with get_client(sync_client=True) as client:
        try:
            return {doc.name: doc.data for doc in client.read_block_documents_by_type(slug)}
        except ObjectNotFound:
            return {}


def delete(slug: str, name: str) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.delete_block_document(client.read_block_document_by_name(name, slug).id)
        except ObjectNotFound:
            pass


@pytest.fixture
def restore_blocks(registered_blocks):
    """Start from the default PlannerSettings; afterwards leave the server's planflow
    blocks as they were (other modules plan over them)."""
    before = {slug: saved(slug) for slug in SLUGS}
    PlannerSettings().save("default", overwrite=True)
    yield
    settings = before["planflow-planner-settings"].get("default", {})
    PlannerSettings(**{k: v for k, v in settings.items() if k in PlannerSettings.model_fields}).save(
        "default", overwrite=True
    )
    for slug in SLUGS:
        for name in set(saved(slug)) - set(before[slug]):
            delete(slug, name)


def test_a_folder_applied_twice_changes_nothing_the_second_time(tmp_path, restore_blocks):
    folder = write(tmp_path / "blocks", pools=POOLS, settings=SETTINGS, routes=ROUTES)
    machine = local_pool_from_machine()

    planned = plan_folder(folder)
    assert planned == [
        "planflow-resource-pool/docs-a: would be created",
        "planflow-resource-pool/docs-b: would be created (cpu, gpu, mem_gib from this machine)",
        "planflow-alert-route/planflow-docs-test-alert: would be created",
        "planflow-planner-settings/default: would be updated (solver: 'highs' -> 'cbc', time_limit_s: 10.0 -> 7.0)",
    ]
    assert "docs-a" not in saved("planflow-resource-pool")  # planning changed nothing

    assert apply_folder(folder) == [
        "planflow-resource-pool/docs-a: created",
        "planflow-resource-pool/docs-b: created (cpu, gpu, mem_gib from this machine)",
        "planflow-alert-route/planflow-docs-test-alert: created",
        "planflow-planner-settings/default: updated (solver: 'highs' -> 'cbc', time_limit_s: 10.0 -> 7.0)",
    ]
    assert apply_folder(folder) == [
        "planflow-resource-pool/docs-a: unchanged",
        "planflow-resource-pool/docs-b: unchanged",
        "planflow-alert-route/planflow-docs-test-alert: unchanged",
        "planflow-planner-settings/default: unchanged",
    ]
    docs_b = ResourcePool.load("docs-b")
    assert (docs_b.cpu, docs_b.gpu, docs_b.mem_gib) == (machine.cpu, machine.gpu, machine.mem_gib)
    assert (docs_b.cost_per_hour, docs_b.backup_pool) == (1.5, "docs-a")
    assert ResourcePool.load("docs-a").capacity() == {"cpu": 2.0, "gpu": 0.0, "mem_gib": 4.0}
    route = AlertRoute.load("planflow-docs-test-alert")
    assert (route.alertname, route.action, route.max_attempts) == ("PlanflowDocsTestAlert", "none", 4)
    assert route.cooldown_seconds == 30.0  # left out: the block's default
    settings = PlannerSettings.load("default")
    assert (settings.solver, settings.time_limit_s, settings.mip_gap) == ("cbc", 7.0, 0.05)

    # An edit made in the UI to a block the folder states is undone, and said so.
    ResourcePool(work_pool="docs-a", cpu=1, mem_gib=4, backup_pool=None).save("docs-a", overwrite=True)
    assert (
        apply_folder(folder)[0]
        == "planflow-resource-pool/docs-a: updated (cpu: 1.0 -> 2.0, backup_pool: None -> 'local')"
    )
    assert ResourcePool.load("docs-a").cpu == 2.0


def test_a_bad_folder_lists_every_problem_and_applies_nothing(tmp_path, registered_blocks):
    folder = write(
        tmp_path / "blocks",
        pools="""\
            type: planflow-resource-pool
            name: docs-ok
            work_pool: docs-ok
            cpu: 1
            mem_gib: 1
            ---
            type: planflow-resource-pool
            name: docs-bad
            work_pool: docs-bad
            cpus: 4
            mem_gib: -1
            gpu: lots
            backup_pool: lcoal
            ---
            type: planflow-resource-pool
            name: docs-ok
            work_pool: again
            cpu: 1
            mem_gib: 1
        """,
        settings="""\
            type: planflow-planner-settings
            name: defualt
            solver: higs
        """,
        routes="""\
            type: planflow-alert-route
            name: backlog
            alertname: PlanflowLateRunBacklog
            action: rescal
            ---
            - not a mapping
        """,
    )
    (folder / "broken.yml").write_text("type: [unclosed\n")
    with pytest.raises(BlockDocumentError) as caught:
        apply_folder(folder)
    problems = caught.value.problems
    expected = [
        "broken.yml:2: not valid YAML: expected ',' or ']', but got '<stream end>'",
        "pools.yaml:7 planflow-resource-pool/docs-bad: field 'cpu' is missing (cpu: CPU cores available at once",
        "pools.yaml:7 planflow-resource-pool/docs-bad: gpu='lots': Input should be a valid integer",
        "Fix: set gpu to a valid integer, or `machine` (this machine's gpu)",
        "pools.yaml:7 planflow-resource-pool/docs-bad: mem_gib=-1: Input should be greater than 0.",
        "Fix: set mem_gib to a value greater than 0",
        "pools.yaml:7 planflow-resource-pool/docs-bad: unknown field 'cpus'. Did you mean 'cpu'? Fix: rename or "
        "remove it; planflow-resource-pool takes work_pool, cpu, gpu, mem_gib, cost_per_hour, backup_pool",
        "pools.yaml:15 planflow-resource-pool/docs-ok: stated twice (also at pools.yaml:1). Fix: keep one",
        "settings.yaml:1 planflow-planner-settings/defualt: the planner reads only the PlannerSettings named 'default'",
        "planflow-planner-settings/defualt: solver='higs': Input should be 'highs' or 'cbc'. Did you mean 'highs'?",
        "routes.yaml:1 planflow-alert-route/backlog: the route of alert 'PlanflowLateRunBacklog' is read from the "
        "document named 'planflow-late-run-backlog', not 'backlog'. Fix: name it 'planflow-late-run-backlog'",
        "action='rescal': Input should be 'retry', 'failover', 'rescale' or 'none'. Did you mean 'rescale'?",
        "routes.yaml:6: a block document is a mapping of `type`, `name` and the block's fields, not a list",
        # its backup_pool too, beside the document's other problems (it came once they were fixed)
        "pools.yaml:7 planflow-resource-pool/docs-bad: backup_pool='lcoal' names no ResourcePool in blocks/",
    ]
    message = str(caught.value)
    for text in expected:
        assert text in message, f"{text!r} not in:\n{message}"
    assert len(problems) == 12, message
    assert message.startswith(f"{folder}: 12 problem(s) in the block documents; nothing was applied")
    assert "docs-ok" not in saved("planflow-resource-pool")  # the valid document was not applied either


def test_an_unknown_block_type_is_named_with_the_closest_and_the_known_ones(tmp_path):
    folder = write(tmp_path / "blocks", pools="type: resource-pool\nname: docs-x\ncpu: 1\n")
    with pytest.raises(BlockDocumentError) as caught:
        load_folder(folder)  # no server needed to check documents
    assert caught.value.problems == [
        "pools.yaml:1 resource-pool/docs-x: type 'resource-pool' is not a planflow block type. Did you mean "
        "'planflow-resource-pool'? Fix: use one of planflow-resource-pool, planflow-planner-settings, "
        "planflow-alert-route"
    ]


def test_a_backup_pool_must_exist_in_the_folder_or_on_the_server(tmp_path, registered_blocks):
    folder = write(
        tmp_path / "blocks",
        pools="type: planflow-resource-pool\nname: docs-c\nwork_pool: docs-c\ncpu: 1\nmem_gib: 1\nbackup_pool: lcoal\n",
    )
    with pytest.raises(BlockDocumentError) as caught:
        plan_folder(folder)
    assert caught.value.problems == [
        "pools.yaml:1 planflow-resource-pool/docs-c: backup_pool='lcoal' names no ResourcePool in blocks/ or on the "
        "server. Did you mean 'local'? Fix: add its document, or correct the name"
    ]
    # beside the document's other problems, at once (it came only once they were fixed)
    broken = write(
        tmp_path / "broken",
        pools="type: planflow-resource-pool\nname: docs-d\nwork_pool: docs-d\ncpu: -1\nmem_gib: 1\n"
        "backup_pool: nowhere\n",
    )
    with pytest.raises(BlockDocumentError) as caught:
        plan_folder(broken)
    problems = caught.value.problems
    assert len(problems) == 2 and "cpu" in problems[0], problems
    assert problems[1].startswith("pools.yaml:1 planflow-resource-pool/docs-d: backup_pool='nowhere' names no "), (
        problems
    )


def test_a_missing_folder_and_an_empty_one_say_what_to_add(tmp_path):
    with pytest.raises(BlockDocumentError, match=r"no folder .*nowhere\. Fix: create it"):
        load_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BlockDocumentError, match=r"no block documents \(\*\.yaml\) in .*empty\. Fix: add"):
        load_folder(tmp_path / "empty")


def test_no_server_is_said_with_how_to_start_one(tmp_path):
    folder = write(tmp_path / "blocks", settings=SETTINGS)
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with pytest.raises(ServerNotAnswering, match=r"127\.0\.0\.1:9/api does not answer.*planflow server up"):
            apply_folder(folder)


# -- the repository's own blocks/ folder ----------------------------------------------
def test_the_repository_folder_states_the_framework_defaults():
    """The example project's documents give the blocks planflow creates by itself
    (ensure_defaults, `planflow workpools apply`), so applying them changes nothing new."""
    documents = {d.ref: d.block for d in load_folder(REPO_BLOCKS)}
    machine = local_pool_from_machine()
    sized = {"cpu": machine.cpu, "gpu": machine.gpu, "mem_gib": machine.mem_gib, "cost_per_hour": 0.0}
    assert documents.pop("planflow-resource-pool/local") == ResourcePool(work_pool="local-process", **sized)
    assert documents.pop("planflow-resource-pool/docker") == ResourcePool(
        work_pool="docker", backup_pool="local", **sized
    )
    assert documents.pop("planflow-resource-pool/kubernetes") == ResourcePool(
        work_pool="kubernetes", backup_pool="docker", **KUBERNETES_EXAMPLE
    )
    assert documents.pop("planflow-planner-settings/default") == PlannerSettings()
    for alertname in DEFAULT_ROUTES:
        assert documents.pop(f"planflow-alert-route/{route_name(alertname)}") == default_route(alertname), alertname
    assert documents == {}, f"documents beyond the defaults: {sorted(documents)}"


def test_the_repository_folder_plans_cleanly_and_planning_changes_nothing(registered_blocks):
    before = {slug: saved(slug) for slug in SLUGS}
    lines = plan_folder(REPO_BLOCKS)
    assert len(lines) == 3 + 1 + len(DEFAULT_ROUTES)
    assert all(line.split(": ")[1].startswith(("unchanged", "would be")) for line in lines), lines
    assert {slug: saved(slug) for slug in SLUGS} == before
