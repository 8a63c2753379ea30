"""Fraud-risk steps called directly with small parameters."""

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from flows.fraud_risk import steps as S

SMALL = dict(n_customers=200, n_merchants=120, n_days=30)


@pytest.fixture(scope="module")
def chain():
    tx = S.transactions(seed=5, **SMALL)
    feats = S.features(tx)
    model = S.risk_model(feats, holdout_days=10, seed=5, max_iter=60)
    sc = S.scores(model, feats)
    return tx, feats, model, sc, S.decisions(sc)


def test_all_lists_steps_in_order():
    assert S.__all__ == ["transactions", "features", "risk_model", "scores", "decisions"]


def test_transactions_shape_and_determinism(chain):
    tx = chain[0]
    assert {"txn_id", "customer_id", "merchant_id", "ts", "amount", "category", "is_fraud"} <= set(tx.columns)
    assert tx.height > 3000 and tx["amount"].min() > 0
    assert 0.003 < tx["is_fraud"].mean() < 0.05
    assert tx["ts"].is_sorted()
    assert_frame_equal(tx, S.transactions(seed=5, **SMALL))
    assert not tx.equals(S.transactions(seed=6, **SMALL))


def test_features_use_only_the_past():
    tx = pl.DataFrame(
        {
            "txn_id": [0, 1, 2, 3],
            "customer_id": [1, 1, 1, 2],
            "merchant_id": [9, 9, 8, 9],
            "ts": pl.datetime_range(pl.datetime(2024, 1, 1), pl.datetime(2024, 1, 1, 0, 30), "10m", eager=True),
            "amount": [10.0, 20.0, 400.0, 5.0],
            "category": pl.Series(["grocery"] * 4, dtype=pl.Enum(S._CAT_NAMES)),
            "home_country": ["US"] * 4,
            "txn_country": ["US", "US", "FR", "US"],
            "is_fraud": [False, True, True, False],
        }
    )
    f = S.features(tx, label_delay_days=0).sort("txn_id")
    assert f["txn_count_1h"].to_list() == [0, 1, 2, 0]  # current txn excluded
    assert f["amount_sum_1h"].to_list()[2] == pytest.approx(30.0)
    assert f["new_merchant"].to_list() == [1, 0, 1, 1]
    assert f["amount_z"][2] > 2  # 400 vs history of 10, 20
    # merchant 9: 3rd transaction (txn 3) sees one earlier fraud out of two
    rate = f["merchant_fraud_rate"].to_list()
    assert rate[3] > rate[0]
    # with a label delay, the fresh fraud label is not visible yet
    assert S.features(tx, label_delay_days=7).sort("txn_id")["merchant_fraud_rate"][3] == pytest.approx(rate[0])


def test_features_row_per_transaction(chain):
    tx, feats = chain[:2]
    assert feats.height == tx.height
    assert set(S.FEATURE_COLUMNS) <= set(feats.columns)
    assert feats["txn_id"].sort().to_list() == tx["txn_id"].sort().to_list()


def test_time_split_has_no_leakage(chain):
    _, feats, model, sc, _ = chain
    assert model.train_rows == feats.filter(pl.col("ts") < model.cutoff).height
    assert sc.holdout["ts"].min() >= model.cutoff
    assert model.train_rows + sc.holdout.height == feats.height


def test_scores_are_informative(chain):
    sc = chain[3]
    assert 0.7 < sc.roc_auc < 0.995
    assert sc.pr_auc > 2 * sc.fraud_rate
    assert set(sc.key_metrics()) >= {"roc_auc", "pr_auc"}


def test_decisions_thresholds_ordered_and_save_cost(chain):
    d = chain[4]
    assert 0 <= d.review_threshold <= d.decline_threshold
    assert d.cost_policy < d.cost_approve_all
    assert 0 < d.review_rate < 0.5 and 0 <= d.decline_rate < 0.2
    assert d.key_metrics()["cost_saved_pct"] > 0


def test_policy_costs_by_hand():
    score = np.array([0.1, 0.5, 0.9])
    fraud = np.array([False, True, True])
    amount = np.array([100.0, 100.0, 100.0])
    grid = np.array([0.0, 0.3, 0.7, 1.01])
    c = S._policy_costs(score, fraud, amount, grid, 4.0, 1.0, 25.0, 1.0)
    assert c[3, 3] == pytest.approx(200.0)  # approve all: lose both frauds
    assert c[1, 3] == pytest.approx(8.0)  # review the two frauds, catch both
    assert c[0, 0] == pytest.approx(25.0)  # decline all: one good customer
    assert np.isinf(c[3, 0])  # review above decline is not a policy
    expensive = S._policy_costs(score, fraud, amount, grid, 500.0, 1.0, 25.0, 1.0)
    assert np.unravel_index(np.argmin(expensive), c.shape)[1] <= 1  # decline instead of review
