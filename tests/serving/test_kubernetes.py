"""deployments/kubernetes/serving.yaml: valid offline (kubernetes-validate, like every
manifest in tests/deployments/test_kubernetes.py), two replicas, ready only with a model."""

from __future__ import annotations

import kubernetes_validate
import yaml

from tests.serving.conftest import ROOT

MANIFEST = ROOT / "deployments" / "kubernetes" / "serving.yaml"


def test_serving_deployment_and_service():
    docs = {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}
    for doc in docs.values():
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    deployment, service = docs["Deployment"], docs["Service"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:4] == ["python", "-m", "planflow.serving", "fraud-risk"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
