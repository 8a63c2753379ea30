"""Predictive-maintenance steps: fork (anomaly / RUL) and join (plan) with small parameters."""

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from flows.predictive_maintenance import steps as S

SMALL = dict(n_machines=24)


@pytest.fixture(scope="module")
def chain():
    r = S.sensor_readings(seed=4, **SMALL)
    f = S.sensor_features(r)
    a = S.anomaly_model(f, seed=4, n_trees=50)
    m = S.rul_model(f, n_folds=3, seed=4, max_iter=30)
    return r, f, a, m, S.maintenance_plan(a, m, f)


def test_readings_shape_truth_and_determinism(chain):
    r = chain[0]
    assert {"machine_id", "cycle", *S.SENSORS, "is_anomaly", "rul", "failed"} <= set(r.columns)
    assert r["machine_id"].n_unique() == 24
    # RUL counts down one per cycle and failed machines run to RUL 1
    last = r.group_by("machine_id").agg(
        pl.col("rul").last(), pl.col("failed").first(), pl.col("rul").diff().max().alias("d")
    )
    assert (last["d"] == -1).all()
    assert (last.filter("failed")["rul"] == 1).all() and (last.filter(~pl.col("failed"))["rul"] > 1).all()
    assert 0.005 < r["is_anomaly"].mean() < 0.05
    assert_frame_equal(r, S.sensor_readings(seed=4, **SMALL))
    assert not r.equals(S.sensor_readings(seed=5, **SMALL))


def test_degradation_visible_in_features(chain):
    f = chain[1]
    assert f.height == chain[0].height and f.null_count().sum_horizontal().item() == 0
    late = f.filter(pl.col("rul") < 30)["vibration_adj_mean50"].mean()
    early = f.filter(pl.col("cycle") < 60)["vibration_adj_mean50"].mean()
    assert late > early + 1.0


def test_rolling_features_are_per_machine():
    r = S.sensor_readings(seed=4, n_machines=4)
    f = S.sensor_features(r)
    one = S.sensor_features(r.filter(pl.col("machine_id") == 2))
    assert_frame_equal(f.filter(pl.col("machine_id") == 2), one)


def test_anomaly_branch_finds_injected_anomalies(chain):
    a = chain[2]
    assert a.precision > 0.5 and a.recall > 0.7
    assert a.flags.height == chain[1].height


def test_rul_branch_is_machine_wise_and_accurate(chain):
    f, m = chain[1], chain[3]
    assert set(m.folds) == set(f["machine_id"].unique().to_list())
    k = m.folds[3]
    rows = f.filter(pl.col("machine_id") == 3)
    # out-of-fold prediction for machine 3 comes from the model of its own fold (which never saw it)
    pred = np.clip(m.models[k].predict(rows.select(m.feature_names).to_numpy()), 0, 150)
    assert np.allclose(pred, m.oof.filter(pl.col("machine_id") == 3)["rul_pred"].to_numpy())
    assert "rul" not in m.feature_names and "is_anomaly" not in m.feature_names
    assert 2 < m.mae < 30
    assert m.latest.height == 24


def test_plan_respects_crew_capacity_and_deadlines(chain):
    _, f, a, m, p = chain
    for cap in (1, 2):
        plan = S.maintenance_plan(a, m, f, crew_capacity=cap, horizon_shifts=5)
        s = plan.schedule["shift"].drop_nulls()
        assert s.value_counts()["count"].max() <= cap
        assert s.len() <= cap * 5 and (s < 5).all()
        done = plan.schedule.filter(pl.col("shift").is_not_null())
        assert (done["shift"] <= done["deadline_shift"]).all()
    assert p.schedule["machine_id"].is_in(m.latest.filter("failed")["machine_id"].implode()).sum() == 0
    assert 0 <= p.failures_avoided <= p.failures_in_horizon


def test_greedy_prefers_priority_and_uses_latest_free_shift():
    shift = S._greedy_schedule(
        np.array([0.9, 0.5, 0.8, 0.1]),
        np.array([1, 0, 1, 2]),
        np.array([True, True, True, False]),
        n_shifts=3,
        capacity=1,
    )
    assert shift.tolist() == [1, -1, 0, -1]


def test_fork_join_end_to_end_plan_beats_doing_nothing():
    r = S.sensor_readings(seed=9, n_machines=40)
    f = S.sensor_features(r)
    plan = S.maintenance_plan(
        S.anomaly_model(f, n_trees=50), S.rul_model(f, n_folds=3, max_iter=30), f, crew_capacity=3
    )
    km = plan.key_metrics()
    assert km["failures_in_horizon"] >= 1 and km["failures_avoided"] >= 1
    assert km["max_jobs_per_shift"] <= 3
