"""Rescale on a Kubernetes pool: the worker Deployment's replicas, through the Kubernetes
API (kubernetes_asyncio, as kubectl scale does).

No cluster runs here, so the first test talks to a FAKE Kubernetes API server (a real HTTP
server implementing only the Deployment `scale` subresource) named as such; the Prefect
server, the rescale flow and the Kubernetes client are real. The live test runs where a
cluster is reachable (KUBECONFIG) and the worker Deployment exists.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.remediation.conftest import FLAKY_PIPELINES, deploy_flaky, route_override

IN_CI = os.environ.get("CI", "").lower() == "true"


def fake_kubernetes_api() -> tuple[object, dict]:
    """A FastAPI app answering GET/PATCH .../deployments/{name}/scale like the API server."""
    state: dict = {"replicas": {("planflow", "prefect-worker"): 1}, "requests": []}
    app = FastAPI()

    def scale(namespace: str, name: str) -> dict:
        replicas = state["replicas"][(namespace, name)]
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas},
            "status": {"replicas": replicas},
        }

    @app.api_route("/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale", methods=["GET", "PATCH"])
    async def deployment_scale(namespace: str, name: str, request: Request):
        state["requests"].append(
            (
                request.method,
                request.url.path,
                request.headers.get("authorization"),
                request.headers.get("content-type"),
            )
        )
        if (namespace, name) not in state["replicas"]:
            return JSONResponse(
                {
                    "kind": "Status",
                    "status": "Failure",
                    "reason": "NotFound",
                    "code": 404,
                    "message": f'deployments.apps "{name}" not found',
                },
                status_code=404,
            )
        if request.method == "PATCH":
            patch = json.loads(await request.body())
            state["replicas"][(namespace, name)] = int(patch["spec"]["replicas"])
        return scale(namespace, name)

    return app, state


@pytest.fixture
def fake_cluster(tmp_path, monkeypatch):
    from planflow.ops.server import free_port

    from tests.monitoring.helpers import ThreadedServer

    app, state = fake_kubernetes_api()
    port = free_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    state["kubeconfig"] = kubeconfig
    with ThreadedServer(app, port):
        yield state


def test_kube_scale_reads_and_patches_the_worker_deployment_fake_api_server(fake_cluster):
    from planflow.remediation.kube import KubeError, scale_workers, worker_replicas

    assert worker_replicas("planflow", "prefect-worker") == 1
    assert scale_workers("planflow", "prefect-worker", 3) == 3
    assert fake_cluster["replicas"][("planflow", "prefect-worker")] == 3
    method, path, auth, content_type = fake_cluster["requests"][-1]
    assert (method, auth) == ("PATCH", "Bearer fake-token") and "patch" in content_type
    with pytest.raises(KubeError, match=r"404.*planflow/missing.*kubernetes_worker_deployment"):
        worker_replicas("planflow", "missing")


def test_kube_scale_without_credentials_says_what_to_set(tmp_path, monkeypatch):
    from planflow.remediation.kube import KubeError, worker_replicas

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nowhere"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeError, match=r"no kubeconfig at .*nowhere.*Fix: set KUBECONFIG"):
        worker_replicas("planflow", "prefect-worker")


@pytest.mark.parametrize("credentials", ["kubeconfig", "block"])
def test_rescale_on_a_kubernetes_pool_scales_replicas_and_back_fake_api_server(
    module_leftovers, fake_cluster, monkeypatch, tmp_path, credentials
):
    """`kubeconfig`: KUBECONFIG names the cluster; `block`: a KubernetesCredentials block
    named in the AlertRoute does (and KUBECONFIG points nowhere)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Cancelled
    from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

    from planflow.remediation.alert import AlertEvent
    from planflow.remediation.rescale import rescale

    monkeypatch.setenv("PLANFLOW_PIPELINES", FLAKY_PIPELINES)
    block = ""
    if credentials == "block":
        block = f"test-k8s-{uuid.uuid4().hex[:6]}"
        config = KubernetesClusterConfig.from_file(fake_cluster["kubeconfig"])
        KubernetesCredentials(cluster_config=config).save(block)
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nowhere"))
    alert = "PlanflowLateRunBacklog"
    pool = f"k8s-{uuid.uuid4().hex[:6]}"
    module_leftovers.pools.append(pool)
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="kubernetes", concurrency_limit=1))
    labels = {"alertname": alert, "work_pool": pool, "work_queue": "default"}
    firing = AlertEvent(
        event_id=uuid.uuid4(), event="planflow.alert.firing", resource_id=f"prefect.work-pool.{pool}", labels=labels
    )
    resolved = AlertEvent(event="planflow.alert.resolved", work_pool=pool, labels=labels)
    with route_override(
        alert,
        action="rescale",
        max_attempts=3,
        cooldown_seconds=300,
        rate_limit=10,
        min_workers=1,
        max_workers=3,
        max_concurrency=8,
        kubernetes_namespace="planflow",
        kubernetes_worker_deployment="prefect-worker",
        kubernetes_credentials=block,
    ):
        deployment = deploy_flaky(f"remediation-flaky-{pool}", pool, ["planflow", "kubernetes"])
        with get_client(sync_client=True) as client:
            runs = [client.create_flow_run_from_deployment(deployment.id, parameters={"seed": i}) for i in range(3)]
            up = rescale(firing)
            assert up["outcome"] == "succeeded", up
            assert up["live_workers"] == ["replica-0"] and up["target_workers"] == 3, up
            assert fake_cluster["replicas"][("planflow", "prefect-worker")] == 3
            assert client.read_work_pool(pool).concurrency_limit == 3
            early = rescale(resolved)
            assert early["outcome"] == "skipped" and "3 run(s) still wait" in early["reason"], early
            assert fake_cluster["replicas"][("planflow", "prefect-worker")] == 3  # backlog first
            for run in runs:  # the backlog is gone (no cluster here runs them)
                client.set_flow_run_state(run.id, Cancelled(message="test: backlog drained"), force=True)
            down = rescale(resolved)
            assert down["outcome"] == "succeeded", down
            assert down["stopped"] == ["planflow/prefect-worker"], down
            assert fake_cluster["replicas"][("planflow", "prefect-worker")] == 1
            assert client.read_work_pool(pool).concurrency_limit == 1
    assert {auth for _, _, auth, _ in fake_cluster["requests"]} == {"Bearer fake-token"}


def test_kube_names_a_missing_credentials_block(registered_blocks):
    from planflow.remediation.kube import KubeError, worker_replicas

    with pytest.raises(KubeError, match=r"no KubernetesCredentials block named 'no-such-block'.*Fix"):
        worker_replicas("planflow", "prefect-worker", "no-such-block")


def test_kube_scale_live_cluster():
    """Against a real cluster: read the worker Deployment's replicas and set them to the
    same value (changes nothing). Runs where KUBECONFIG reaches a cluster with the
    prefect-worker Deployment (deployments/kubernetes/README.md)."""
    from planflow.remediation.kube import KubeError, scale_workers, worker_replicas

    namespace = os.environ.get("PLANFLOW_K8S_NAMESPACE", "planflow")
    name = os.environ.get("PLANFLOW_K8S_WORKER_DEPLOYMENT", "prefect-worker")
    try:
        replicas = worker_replicas(namespace, name)
    except KubeError as exc:
        pytest.skip(
            f"no reachable Kubernetes cluster with deployment {namespace}/{name} ({exc}); "
            "no cluster can run on this machine"
        )
    assert scale_workers(namespace, name, replicas) == replicas
