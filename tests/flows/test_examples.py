"""Each example pipeline end to end on a real Prefect server, on small data."""

from __future__ import annotations

import pytest

from planflow import to_flow
from planflow.core import discovery as registry

pytestmark = [pytest.mark.usefixtures("registered_blocks"), pytest.mark.slow]

SMALL = {
    "fraud-risk": {"n_customers": 200, "n_merchants": 120, "n_days": 30, "max_iter": 60},
    "predictive-maintenance": {"n_machines": 24, "n_folds": 3, "max_iter": 30, "n_trees": 50},
    "image-classification": {"augment": 0, "test_size": 0.5},
    "digits-quick": {},
}


@pytest.mark.parametrize("name", sorted(SMALL), ids=sorted(SMALL))
def test_example_pipeline_completes_with_its_quality_metric(name):
    pipeline = registry.get(name)
    result = to_flow(pipeline)(**SMALL[name])
    steps = result["steps"]
    assert list(steps) == pipeline.topological_order()
    assert {s["state"] for s in steps.values()} <= {"Completed", "Cached"}  # data steps may be cached
    metrics = {k: v for s in steps.values() for k, v in s["metrics"].items()}
    if name == "fraud-risk":
        assert 0.7 < metrics["roc_auc"] < 1.0
        assert metrics["cost_saved_pct"] > 0
    elif name == "predictive-maintenance":
        assert metrics["f1"] > 0.5 and metrics["mae_cycles"] < 40
        assert metrics["max_jobs_per_shift"] <= 3  # the crew capacity holds
    else:
        assert metrics["accuracy"] > 0.95


def test_predictive_maintenance_forks_and_joins():
    p = registry.get("predictive-maintenance")
    assert len(p.steps) >= 5
    assert set(p.downstream("sensor_features")) >= {"anomaly_model", "rul_model"}
    assert set(p.upstream("maintenance_plan")) >= {"anomaly_model", "rul_model"}
