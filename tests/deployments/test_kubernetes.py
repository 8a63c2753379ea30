"""deployments/kubernetes/: every manifest valid against the Kubernetes API schemas
(offline, kubernetes-validate), the Helm values consistent with planflow's pools, and a
live run where KUBECONFIG points at a cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from planflow.prefect.jobvars import job_variables, render_kubernetes_job

from tests.deployments.conftest import PREFECT, PREFECT_FILE, ROOT, run_cli, wait_for_final_state

K8S_VERSION = "1.30.0"
MANIFESTS = sorted((ROOT / "deployments" / "kubernetes").glob("*.yaml"))
HELM = ROOT / "deployments" / "kubernetes" / "helm"


def documents():
    for path in MANIFESTS:
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                yield pytest.param(doc, id=f"{path.name}#{index}:{doc.get('kind')}")


def test_there_are_manifests():
    kinds = {doc.values[0]["kind"] for doc in documents()}
    assert {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
    } <= kinds


@pytest.mark.parametrize("doc", documents())
def test_manifest_is_valid_kubernetes(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert doc["metadata"].get("namespace", "planflow") == "planflow"


def by_kind_name(kind: str, name: str) -> dict:
    for param in documents():
        doc = param.values[0]
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name}")


def test_exporter_and_bridge_run_the_project_modules():
    exporter = by_kind_name("Deployment", "planflow-exporter")["spec"]["template"]["spec"]["containers"][0]
    assert exporter["command"][:3] == ["python", "-m", "planflow.monitoring.exporter"]
    assert "9464" in exporter["command"] and exporter["ports"][0]["containerPort"] == 9464
    bridge = by_kind_name("Deployment", "planflow-bridge")["spec"]["template"]["spec"]["containers"][0]
    assert bridge["command"][:3] == ["python", "-m", "planflow.monitoring.bridge"]
    assert bridge["ports"][0]["containerPort"] == 9465
    token = next(e for e in bridge["env"] if e["name"] == "PLANFLOW_BRIDGE_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "planflow-bridge-token", "key": "token"}
    for service, port in (("planflow-exporter", 9464), ("planflow-bridge", 9465)):
        assert by_kind_name("Service", service)["spec"]["ports"][0]["port"] == port


def test_no_usable_secret_is_shipped():
    """A committed Secret is a token anyone knows: the manifests ship none, and any
    value that looks like a placeholder is one the bridge refuses."""
    shipped = [doc.values[0] for doc in documents() if doc.values[0]["kind"] == "Secret"]
    assert shipped == [], [s["metadata"]["name"] for s in shipped]
    for path in MANIFESTS:
        assert "change-me" not in path.read_text().lower(), path.name


@pytest.mark.parametrize("name", ["planflow-bridge", "planflow-exporter"])
def test_prefect_clients_get_the_servers_auth_string_from_its_secret(name):
    """The Helm values turn basic auth on for the server (existingSecret prefect-server-auth):
    every client of its API must send PREFECT_API_AUTH_STRING, from that same Secret."""
    server = yaml.safe_load((HELM / "prefect-server-values.yaml").read_text())
    secret = server["server"]["basicAuth"]["existingSecret"]
    container = by_kind_name("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    auth = next((e for e in container["env"] if e["name"] == "PREFECT_API_AUTH_STRING"), None)
    assert auth is not None, f"{name} has no PREFECT_API_AUTH_STRING"
    assert auth["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "auth-string"}


def test_bridge_probes_readiness_and_liveness_apart():
    bridge = by_kind_name("Deployment", "planflow-bridge")["spec"]["template"]["spec"]["containers"][0]
    assert bridge["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert bridge["livenessProbe"]["httpGet"]["path"] == "/health"


def test_worker_role_can_run_jobs():
    rules = by_kind_name("Role", "prefect-worker")["rules"]
    jobs = next(r for r in rules if "jobs" in r["resources"])
    assert {"create", "get", "list", "watch", "delete"} <= set(jobs["verbs"])
    pods = next(r for r in rules if "pods" in r["resources"])
    assert {"get", "list", "watch"} <= set(pods["verbs"])
    assert any("pods/log" in r["resources"] for r in rules)
    binding = by_kind_name("RoleBinding", "prefect-worker")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prefect-worker", "namespace": "planflow"}]


def test_flow_run_service_account_matches_the_deployments():
    spec = yaml.safe_load(PREFECT_FILE.read_text())
    k8s = [d for d in spec["deployments"] if d["work_pool"]["name"] == "kubernetes"]
    assert k8s
    for deployment in k8s:
        account = deployment["work_pool"]["job_variables"]["service_account_name"]
        by_kind_name("ServiceAccount", account)


def test_helm_values_point_at_planflows_pool_and_versions():
    server = yaml.safe_load((HELM / "prefect-server-values.yaml").read_text())
    worker = yaml.safe_load((HELM / "prefect-worker-values.yaml").read_text())
    assert server["server"]["image"]["prefectTag"].startswith("3.8.8")
    assert server["postgresql"]["enabled"] is True
    config = worker["worker"]["config"]
    assert (config["workPool"], config["type"]) == ("kubernetes", "kubernetes")
    assert worker["worker"]["image"]["prefectTag"].startswith("3.8.8")
    assert worker["worker"]["apiConfig"] == "selfHostedServer"
    assert worker["serviceAccount"]["name"] == "prefect-worker"


def test_job_of_a_planned_gpu_component_in_the_planflow_namespace():
    job_vars = job_variables("kubernetes", cpu=2, gpu=1, mem_gib=4, gpu_pool=True)
    job_vars |= {"namespace": "planflow", "service_account_name": "planflow-flow-runs"}
    job = render_kubernetes_job(job_vars)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert job["metadata"]["namespace"] == "planflow"
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "planflow-flow-runs"


# -- live -----------------------------------------------------------------------------
def cluster_problem() -> str | None:
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        return "KUBECONFIG is not set: no Kubernetes cluster to run on (set it to run this test)"
    if not all(Path(p).exists() for p in kubeconfig.split(os.pathsep)):
        return f"KUBECONFIG={kubeconfig} does not exist"
    if not shutil.which("kubectl"):
        return "kubectl is not installed"
    probe = subprocess.run(
        ["kubectl", "version", "--request-timeout=10s", "-o", "json"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"the cluster in KUBECONFIG does not answer: {probe.stderr.strip()[:200]}"
    return None


@pytest.fixture
def cluster(capsys):
    problem = cluster_problem()
    if problem:
        with capsys.disabled():  # said out loud, not only in the skip summary
            print(f"\n[live kubernetes test skipped] {problem}")
        pytest.skip(problem)


def test_pipeline_runs_on_a_real_cluster(cluster, work_pools):
    """Where a cluster exists: apply the manifests, run a kubernetes worker here, and run
    image-classification as a Job. The cluster must reach the Prefect API
    (PLANFLOW_K8S_API_URL, e.g. the server's in-cluster address) and pull PLANFLOW_K8S_IMAGE."""
    image = os.environ.get("PLANFLOW_K8S_IMAGE", "planflow:dev")
    api_url = os.environ.get("PLANFLOW_K8S_API_URL", os.environ["PREFECT_API_URL"])
    for name in ("namespace.yaml", "worker-rbac.yaml"):
        subprocess.run(
            ["kubectl", "apply", "-f", str(ROOT / "deployments" / "kubernetes" / name)], check=True, capture_output=True
        )
    deploy = run_cli(
        [
            PREFECT,
            "--no-prompt",
            "deploy",
            "--prefect-file",
            str(PREFECT_FILE),
            "--name",
            "image-classification-kubernetes",
        ]
    )
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    from prefect.deployments import run_deployment

    job_vars = job_variables("kubernetes", cpu=1, gpu=0, mem_gib=1, image=image)
    job_vars["env"] = {"PREFECT_API_URL": api_url}
    flow_run = run_deployment(
        "image-classification/image-classification-kubernetes",
        parameters={"augment": 0, "test_size": 0.5},
        job_variables=job_vars,
        timeout=0,
    )
    worker = run_cli(
        [PREFECT, "worker", "start", "--pool", "kubernetes", "--type", "kubernetes", "--run-once"], timeout=600
    )
    run = wait_for_final_state(flow_run.id, timeout=300)
    assert run.state.is_completed(), f"{run.state}\n{worker.stdout[-3000:]}\n{worker.stderr[-3000:]}"
