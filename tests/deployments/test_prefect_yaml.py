"""deployments/prefect.yaml: every example pipeline and the component runner on every
pool; `prefect deploy --all` against the real server; a process worker runs one."""

from __future__ import annotations

import ast
from importlib.util import find_spec

import pytest
import yaml

from planflow.prefect.workpools import POOLS

from tests.deployments.conftest import PREFECT, PREFECT_FILE, ROOT, run_cli, wait_for_final_state

PIPELINES = {
    "fraud-risk": "flows/fraud_risk/flow.py:fraud_risk",
    "predictive-maintenance": "flows/predictive_maintenance/flow.py:predictive_maintenance",
    "image-classification": "flows/image_classification/flow.py:image_classification",
}
COMPONENT_FLOW = "planflow.runtime.component_flow:run_component"


def deployment_name(flow: str, pool: str) -> str:
    """Pipelines: `<pipeline>-<pool kind>`; the component flow: named after its work pool,
    which is how distributed mode finds `run-component/<work pool>`."""
    return pool if flow == "run-component" else f"{flow}-{pool.removeprefix('local-')}"


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(PREFECT_FILE.read_text())


def test_every_pipeline_on_every_pool(spec):
    by_name = {(d["entrypoint"], d["name"]): d for d in spec["deployments"]}
    for pool in POOLS:
        for name, entrypoint in {**PIPELINES, "run-component": COMPONENT_FLOW}.items():
            deployment = by_name[(entrypoint, deployment_name(name, pool))]
            assert deployment["work_pool"]["name"] == pool


def test_entrypoints_exist():
    for entrypoint in [*PIPELINES.values(), COMPONENT_FLOW]:
        path, function = entrypoint.split(":")
        if not path.endswith(".py"):  # an import path into the installed planflow
            path = find_spec(path).origin
        source = (ROOT / path).read_text()
        names = {
            n.id
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Assign)
            for n in node.targets
            if isinstance(n, ast.Name)
        }
        names |= {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
        assert function in names, f"{entrypoint}: no {function} in {path}"


def test_a_schedule_is_paused_by_default(spec):
    schedules = [s for d in spec["deployments"] for s in d.get("schedules", [])]
    assert schedules and all(s["active"] is False for s in schedules)


def test_containers_run_the_code_baked_into_the_image(spec):
    for deployment in spec["deployments"]:
        if deployment["work_pool"]["name"] in ("docker", "kubernetes"):
            (step,) = deployment["pull"]
            assert step["prefect.deployments.steps.set_working_directory"]["directory"] == "/opt/planflow"


def client_schema(name: str) -> dict:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name).parameter_openapi_schema


def test_deploy_all_and_run_on_a_process_worker(deployed):
    """`prefect deploy --all`, then `prefect deployment run` and a process worker."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        names = {f"{d.name}" for d in client.read_deployments()}
        fraud = client.read_deployment_by_name("fraud-risk/fraud-risk-process")
        for pool in POOLS:
            client.read_deployment_by_name(f"run-component/{pool}")  # what distributed mode runs
    assert {f"{p}-{s}" for p in PIPELINES for s in ("process", "docker", "kubernetes")} <= names
    assert fraud.schedules and not fraud.schedules[0].active
    assert fraud.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]

    # The Run form is typed: the pipeline's own parameters with types and defaults, and
    # the run options as choices.
    image = client_schema("image-classification/image-classification-process")
    assert image["properties"]["augment"]["type"] == "integer"
    assert image["properties"]["augment"]["default"] == 4
    assert image["properties"]["test_size"]["type"] == "number"
    assert image["properties"]["policy"]["enum"] == ["plan", "fifo"]
    assert image["properties"]["mode"]["enum"] == ["inprocess", "distributed", "dask"]
    refused = run_cli(
        [PREFECT, "deployment", "run", "image-classification/image-classification-process", "--param", "augment=many"]
    )
    assert refused.returncode != 0 and "augment" in refused.stdout + refused.stderr

    started = run_cli(
        [
            PREFECT,
            "deployment",
            "run",
            "image-classification/image-classification-process",
            "--param",
            "augment=0",
            "--param",
            "test_size=0.5",
        ]
    )
    assert started.returncode == 0, started.stdout + started.stderr
    flow_run_id = next(line.split("UUID:")[1].strip() for line in started.stdout.splitlines() if "UUID:" in line)
    worker = run_cli([PREFECT, "worker", "start", "--pool", "local-process", "--run-once"], timeout=240)
    run = wait_for_final_state(flow_run_id, timeout=60)
    assert run.state.is_completed(), (
        f"flow run ended {run.state.type}: {run.state.message}\n{worker.stdout[-3000:]}\n{worker.stderr[-3000:]}"
    )
    assert {"planflow", "pipeline:image-classification"} <= set(run.tags)
