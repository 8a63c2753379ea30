"""The Kubernetes side of rescaling: the replicas of the worker Deployment.

On Kubernetes a pool's workers are the Pods of one Deployment (the prefect-worker Helm
chart's, `prefect-worker` in namespace `planflow` by default; the AlertRoute block names
it). Scaling out is patching that Deployment's `scale` subresource, as
`kubectl scale deployment` does; the flow-run Jobs the workers started are separate
objects, so scaling back down never kills a running flow.

The client is kubernetes_asyncio (it comes with prefect-kubernetes, the `workers` extra).
Credentials: in a Pod, its ServiceAccount (the Role needs `deployments/scale` get and
patch, see deployments/kubernetes/worker-rbac.yaml); elsewhere KUBECONFIG or
~/.kube/config, as kubectl.
"""

from __future__ import annotations

import os
from typing import Any


class KubeError(RuntimeError):
    """The Kubernetes API could not be used; the message says why and what to do."""


async def _api() -> Any:
    try:
        from kubernetes_asyncio import client, config
    except ImportError as exc:  # pragma: no cover - the workers extra is missing
        raise KubeError("kubernetes_asyncio is not installed. Fix: pip install 'planflow[workers]'") from exc
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            return client.ApiClient()
        # KUBECONFIG read now (kubernetes_asyncio reads it once, at import).
        files = os.environ.get("KUBECONFIG") or "~/.kube/config"
        if not any(os.path.exists(os.path.expanduser(f)) for f in files.split(os.pathsep) if f):
            raise FileNotFoundError(f"no kubeconfig at {files}")
        api = client.ApiClient(configuration=client.Configuration())
        await config.load_kube_config(config_file=files, client_configuration=api.configuration)
        return api
    except Exception as exc:  # noqa: BLE001 - config errors come in many types
        raise KubeError(
            f"no Kubernetes credentials ({type(exc).__name__}: {exc}). "
            "Fix: set KUBECONFIG, or run inside the cluster with a ServiceAccount"
        ) from exc


async def _replicas(namespace: str, deployment: str, replicas: int | None) -> int:
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.rest import ApiException

    api = await _api()
    try:
        apps = client.AppsV1Api(api)
        try:
            if replicas is None:
                scale = await apps.read_namespaced_deployment_scale(deployment, namespace)
            else:
                scale = await apps.patch_namespaced_deployment_scale(
                    deployment, namespace, {"spec": {"replicas": int(replicas)}}
                )
        except ApiException as exc:
            raise KubeError(
                f"Kubernetes said {exc.status} {exc.reason} for deployment "
                f"{namespace}/{deployment} (scale): {str(exc.body)[:300]}. Fix: check the "
                "AlertRoute's kubernetes_namespace / kubernetes_worker_deployment and the "
                "Role (deployments/scale: get, patch)"
            ) from exc
        except OSError as exc:
            raise KubeError(f"the Kubernetes API does not answer ({exc}). Fix: check KUBECONFIG") from exc
        return int(scale.spec.replicas or 0)
    finally:
        await api.close()


def worker_replicas(namespace: str, deployment: str) -> int:
    """The desired replicas of the worker Deployment."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    return run_coro_as_sync(_replicas(namespace, deployment, None))


def scale_workers(namespace: str, deployment: str, replicas: int) -> int:
    """Set the worker Deployment's replicas; returns the replicas Kubernetes reports."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    if replicas < 0:
        raise KubeError(f"replicas must be >= 0, got {replicas}")
    return run_coro_as_sync(_replicas(namespace, deployment, replicas))
