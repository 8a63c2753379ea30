"""The Kubernetes side of rescaling: the replicas of the worker Deployment.

On Kubernetes a pool's workers are the Pods of one Deployment (the prefect-worker Helm
chart's, `prefect-worker` in namespace `planflow` by default; the AlertRoute block names
it). Scaling out is patching that Deployment's `scale` subresource, as
`kubectl scale deployment` does; the flow-run Jobs the workers started are separate
objects, so scaling back down never kills a running flow.

The client comes from prefect-kubernetes' `KubernetesCredentials` block (the `workers`
extra): the block the AlertRoute names (`kubernetes_credentials`), else, in a Pod, its
ServiceAccount (the Role needs `deployments/scale` get and patch, see
deployments/kubernetes/worker-rbac.yaml), else the first kubeconfig file of KUBECONFIG
(or ~/.kube/config), read when called, as kubectl does.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prefect.utilities.asyncutils import run_coro_as_sync


class KubeError(RuntimeError):
    """The Kubernetes API could not be used; the message says why and what to do."""


def _kubernetes() -> SimpleNamespace:
    """prefect-kubernetes' credential blocks and the client's exceptions."""
    try:
        # Optional and heavy (about 1.4 s to import): only a rescale on a Kubernetes
        # pool needs it, and only where the `workers` extra is installed.
        from kubernetes_asyncio.client.exceptions import ApiException  # noqa: PLC0415
        from kubernetes_asyncio.config.config_exception import ConfigException  # noqa: PLC0415
        from prefect_kubernetes.credentials import (  # noqa: PLC0415
            KubernetesClusterConfig,
            KubernetesCredentials,
        )
    except ImportError as exc:  # pragma: no cover - the workers extra is missing
        raise KubeError(f"prefect-kubernetes is not installed ({exc}). Fix: pip install 'planflow[workers]'") from exc
    return SimpleNamespace(
        KubernetesCredentials=KubernetesCredentials,
        KubernetesClusterConfig=KubernetesClusterConfig,
        ApiException=ApiException,
        ConfigException=ConfigException,
    )


def kubeconfig_file() -> Path | None:
    """The first existing file of KUBECONFIG (as it is now), else ~/.kube/config, else None."""
    files = os.environ.get("KUBECONFIG") or "~/.kube/config"
    for name in filter(None, files.split(os.pathsep)):
        path = Path(name).expanduser()
        if path.is_file():
            return path
    return None


def credentials(block: str = "") -> Any:
    """The KubernetesCredentials to scale with (see the module docstring)."""
    k8s = _kubernetes()
    KubernetesCredentials, KubernetesClusterConfig = k8s.KubernetesCredentials, k8s.KubernetesClusterConfig
    if block:
        try:
            return KubernetesCredentials.load(block)
        except ValueError as exc:
            raise KubeError(
                f"no KubernetesCredentials block named {block!r} ({exc}). Fix: create it "
                "(prefect-kubernetes), or clear the AlertRoute's kubernetes_credentials"
            ) from exc
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return KubernetesCredentials()  # in a Pod: its ServiceAccount
    path = kubeconfig_file()
    if path is None:
        raise KubeError(
            f"no Kubernetes credentials: no kubeconfig at {os.environ.get('KUBECONFIG') or '~/.kube/config'} "
            "and not inside a cluster. Fix: set KUBECONFIG, run inside the cluster with a "
            "ServiceAccount, or name a KubernetesCredentials block in the AlertRoute"
        )
    try:
        return KubernetesCredentials(cluster_config=KubernetesClusterConfig.from_file(path))
    except Exception as exc:  # noqa: BLE001 - a broken kubeconfig fails in many ways
        raise KubeError(f"cannot read kubeconfig {path} ({type(exc).__name__}: {exc}). Fix: check KUBECONFIG") from exc


async def _replicas(namespace: str, deployment: str, replicas: int | None, creds: Any) -> int:
    k8s = _kubernetes()
    try:
        async with creds.get_client("apps") as apps:
            if replicas is None:
                scale = await apps.read_namespaced_deployment_scale(deployment, namespace)
            else:
                scale = await apps.patch_namespaced_deployment_scale(
                    deployment, namespace, {"spec": {"replicas": int(replicas)}}
                )
    except k8s.ConfigException as exc:
        raise KubeError(
            f"no usable Kubernetes credentials ({exc}). Fix: set KUBECONFIG, run inside the "
            "cluster with a ServiceAccount, or name a KubernetesCredentials block in the AlertRoute"
        ) from exc
    except k8s.ApiException as exc:
        raise KubeError(
            f"Kubernetes said {exc.status} {exc.reason} for deployment "
            f"{namespace}/{deployment} (scale): {str(exc.body)[:300]}. Fix: check the "
            "AlertRoute's kubernetes_namespace / kubernetes_worker_deployment and the "
            "Role (deployments/scale: get, patch)"
        ) from exc
    except OSError as exc:
        raise KubeError(f"the Kubernetes API does not answer ({exc}). Fix: check KUBECONFIG") from exc
    return int(scale.spec.replicas or 0)


def worker_replicas(namespace: str, deployment: str, credentials_block: str = "") -> int:
    """The desired replicas of the worker Deployment."""
    creds = credentials(credentials_block)  # loaded here: Block.load is a coroutine in an event loop
    return run_coro_as_sync(_replicas(namespace, deployment, None, creds))


def scale_workers(namespace: str, deployment: str, replicas: int, credentials_block: str = "") -> int:
    """Set the worker Deployment's replicas; returns the replicas Kubernetes reports."""
    if replicas < 0:
        raise KubeError(f"replicas must be >= 0, got {replicas} for deployment {namespace}/{deployment}")
    return run_coro_as_sync(_replicas(namespace, deployment, replicas, credentials(credentials_block)))
