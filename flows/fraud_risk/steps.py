"""Fraud risk pipeline: pure computation steps.

Pipeline (step name -> consumes):

    transactions(seed, n_customers, n_merchants, n_days)
      -> features(transactions, label_delay_days)
      -> risk_model(features, holdout_days, seed, max_iter)
      -> scores(risk_model, features)
      -> decisions(scores, review_cost, fraud_loss_rate, false_decline_cost, review_catch_rate)

Everything is synthesized deterministically from ``seed``; nothing is read
or downloaded.  The fraud label comes from a latent risk (amount relative to
the customer's habits, foreign country, night time, merchant risk and card
compromise bursts that show up as velocity) plus noise, so a model can learn
it well but not perfectly (holdout ROC AUC ~0.9 at default parameters).

Default parameters: n_customers=2000, n_merchants=800, n_days=60
(~145k transactions).  Small test parameters: ``n_customers=200,
n_merchants=120, n_days=30, max_iter=60`` (~6k rows, whole pipeline ~0.7 s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import polars as pl
from pydantic import ConfigDict, Field, create_model
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, roc_auc_score
from threadpoolctl import threadpool_limits

__all__ = ["transactions", "features", "risk_model", "scores", "decisions"]

_START = datetime(2024, 1, 1)
_COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "BR", "IN", "NG"]
_COUNTRY_P = np.array([0.40, 0.12, 0.10, 0.09, 0.07, 0.06, 0.05, 0.05, 0.04, 0.02])
# category: (share of legit spend, log-amount shift, latent risk)
_CATEGORIES = {
    "grocery": (0.30, -0.3, -0.8),
    "restaurant": (0.20, -0.2, -0.5),
    "fuel": (0.12, 0.0, -0.3),
    "online": (0.18, 0.3, 0.6),
    "electronics": (0.08, 1.0, 0.9),
    "travel": (0.06, 1.3, 0.4),
    "jewelry": (0.03, 1.5, 1.2),
    "gambling": (0.03, 0.5, 1.4),
}
_CAT_NAMES = list(_CATEGORIES)
_CAT_SHARE = np.array([v[0] for v in _CATEGORIES.values()])
_CAT_SHIFT = np.array([v[1] for v in _CATEGORIES.values()])
_CAT_RISK = np.array([v[2] for v in _CATEGORIES.values()])

FEATURE_COLUMNS = [
    "log_amount",
    "amount_z",
    "amount_ratio_max",
    "hour",
    "is_night",
    "country_mismatch",
    "category_code",
    "txn_count_1h",
    "txn_count_24h",
    "amount_sum_1h",
    "amount_sum_24h",
    "secs_since_prev",
    "n_prev_txns",
    "new_merchant",
    "foreign_count_24h",
    "merchant_fraud_rate",
    "merchant_txn_count",
]


def _pick_merchants(
    rng: np.random.Generator, m_country: np.ndarray, m_cat: np.ndarray, country: np.ndarray, cat: np.ndarray
) -> np.ndarray:
    """Pick a merchant with the wanted (country, category) for every row, vectorised."""
    n_cat = len(_CAT_NAMES)
    cell = m_country * n_cat + m_cat
    order = np.argsort(cell, kind="stable")
    counts = np.bincount(cell, minlength=len(_COUNTRIES) * n_cat)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    want = country * n_cat + cat
    # fall back to any merchant of that category when the cell is empty
    empty = counts[want] == 0
    pos = offsets[want] + np.floor(rng.random(len(want)) * counts[want]).astype(int)
    picked = order[np.minimum(pos, len(order) - 1)]
    if empty.any():
        pool = [np.flatnonzero(m_cat == c) for c in range(n_cat)]
        picked[empty] = [rng.choice(pool[c]) for c in cat[empty]]
    return picked


def transactions(seed: int = 7, n_customers: int = 2000, n_merchants: int = 800, n_days: int = 60) -> pl.DataFrame:
    """Synthesize a card-transaction table with a latent-risk fraud label."""
    rng = np.random.default_rng(seed)
    home = rng.choice(len(_COUNTRIES), n_customers, p=_COUNTRY_P)
    mu = rng.normal(3.4, 0.6, n_customers)  # habitual log-amount
    rate = rng.gamma(2.0, 0.6, n_customers)  # txns per day
    peak = rng.normal(14.0, 3.0, n_customers)  # habitual hour
    m_country = rng.choice(len(_COUNTRIES), n_merchants, p=_COUNTRY_P)
    m_cat = rng.choice(len(_CAT_NAMES), n_merchants, p=_CAT_SHARE)
    m_cat[: len(_CAT_NAMES)] = np.arange(len(_CAT_NAMES))  # every category has a merchant
    m_risk = rng.normal(0, 0.7, n_merchants) + 0.5 * _CAT_RISK[m_cat]

    # legit activity
    n_tx = rng.poisson(rate * n_days)
    cust = np.repeat(np.arange(n_customers), n_tx)
    n = len(cust)
    t_hours = rng.integers(0, n_days, n) * 24 + np.mod(rng.normal(peak[cust], 3.5), 24)
    cat = rng.choice(len(_CAT_NAMES), n, p=_CAT_SHARE)
    travel = rng.random(n) < 0.04
    country = np.where(travel, rng.choice(len(_COUNTRIES), n), home[cust])
    log_amt = rng.normal(mu[cust] + _CAT_SHIFT[cat], 0.7)
    burst = np.zeros(n, dtype=bool)

    # card compromises: a burst of rapid, often foreign, risky purchases
    comp = np.flatnonzero(rng.random(n_customers) < 0.05)
    k = 2 + rng.poisson(3, len(comp))
    b_cust = np.repeat(comp, k)
    b_start = np.repeat(rng.uniform(0, n_days * 24, len(comp)), k)
    b_t = b_start + rng.exponential(0.6, len(b_cust))
    b_cat = rng.choice(len(_CAT_NAMES), len(b_cust), p=np.array([1, 1, 1, 4, 4, 1, 3, 3]) / 18)
    b_foreign = rng.random(len(b_cust)) < 0.5
    b_country = np.where(b_foreign, rng.choice(len(_COUNTRIES), len(b_cust)), home[b_cust])
    b_amt = rng.normal(mu[b_cust] + _CAT_SHIFT[b_cat] + 0.6, 0.9)

    cust = np.concatenate([cust, b_cust])
    t_hours = np.concatenate([t_hours, b_t])
    cat = np.concatenate([cat, b_cat])
    country = np.concatenate([country, b_country])
    log_amt = np.concatenate([log_amt, b_amt])
    burst = np.concatenate([burst, np.ones(len(b_cust), dtype=bool)])
    merchant = _pick_merchants(rng, m_country, m_cat, country, cat)
    cat = m_cat[merchant]

    hour = np.mod(t_hours, 24)
    night = (hour < 6) | (hour >= 23)
    mismatch = country != home[cust]
    logit = (
        -6.2
        + 1.5 * (log_amt - mu[cust])
        + 1.8 * mismatch
        + 1.3 * night
        + 1.0 * m_risk[merchant]
        + 5.0 * burst
        + rng.normal(0, 0.5, len(cust))
    )
    is_fraud = rng.random(len(cust)) < 1 / (1 + np.exp(-logit))

    return (
        pl.DataFrame(
            {
                "customer_id": cust.astype(np.int32),
                "merchant_id": merchant.astype(np.int32),
                "ts": pl.Series(np.round(t_hours * 3600).astype(np.int64) * 1000).cast(pl.Duration("ms")) + _START,
                "amount": np.round(np.exp(log_amt), 2),
                "category": pl.Series([_CAT_NAMES[c] for c in cat], dtype=pl.Enum(_CAT_NAMES)),
                "home_country": pl.Series(np.array(_COUNTRIES)[home[cust]]),
                "txn_country": pl.Series(np.array(_COUNTRIES)[country]),
                "is_fraud": is_fraud,
            }
        )
        .sort("ts", "customer_id")
        .with_row_index("txn_id")
    )


def features(transactions: pl.DataFrame, label_delay_days: int = 7) -> pl.DataFrame:
    """Per-transaction features from the customer's and merchant's strictly-past history.

    Merchant fraud rates only use labels older than ``label_delay_days`` (chargebacks
    arrive late), so nothing about the current or recent labels leaks in.
    """
    one = pl.lit(1, dtype=pl.Int32)
    cust = (
        transactions.sort("customer_id", "ts")
        .with_columns(
            log_amount=pl.col("amount").log1p(),
            hour=pl.col("ts").dt.hour().cast(pl.Float64) + pl.col("ts").dt.minute() / 60,
            country_mismatch=(pl.col("txn_country") != pl.col("home_country")).cast(pl.Int8),
            category_code=pl.col("category").to_physical().cast(pl.Int16),
            foreign=(pl.col("txn_country") != pl.col("home_country")).cast(pl.Int32),
            one=one,
        )
        .with_columns(
            is_night=((pl.col("hour") < 6) | (pl.col("hour") >= 23)).cast(pl.Int8),
            n_prev_txns=pl.col("one").cum_sum().over("customer_id") - 1,
            # velocity: activity in the preceding window, current transaction excluded
            txn_count_1h=pl.col("one").rolling_sum_by("ts", "1h", closed="left").over("customer_id"),
            txn_count_24h=pl.col("one").rolling_sum_by("ts", "24h", closed="left").over("customer_id"),
            amount_sum_1h=pl.col("amount").rolling_sum_by("ts", "1h", closed="left").over("customer_id"),
            amount_sum_24h=pl.col("amount").rolling_sum_by("ts", "24h", closed="left").over("customer_id"),
            foreign_count_24h=pl.col("foreign").rolling_sum_by("ts", "24h", closed="left").over("customer_id"),
            secs_since_prev=pl.col("ts").diff().dt.total_seconds().over("customer_id"),
            new_merchant=(pl.col("one").cum_sum().over("customer_id", "merchant_id") == 1).cast(pl.Int8),
            # expanding moments of the customer's previous log-amounts
            _s1=(pl.col("log_amount").cum_sum() - pl.col("log_amount")).over("customer_id"),
            _s2=(pl.col("log_amount").pow(2).cum_sum() - pl.col("log_amount").pow(2)).over("customer_id"),
            _max=pl.col("amount").cum_max().shift(1).over("customer_id"),
        )
        .with_columns(
            _mean=pl.col("_s1") / pl.col("n_prev_txns"),
        )
        .with_columns(
            amount_z=(pl.col("log_amount") - pl.col("_mean"))
            / (pl.col("_s2") / pl.col("n_prev_txns") - pl.col("_mean").pow(2)).clip(0.05).sqrt(),
            amount_ratio_max=pl.col("amount") / pl.col("_max"),
        )
    )
    fraud = pl.col("is_fraud").cast(pl.Int32)

    def _recent(x: pl.Expr) -> pl.Expr:  # count within the label delay (not yet labelled)
        if label_delay_days <= 0:
            return pl.lit(0, dtype=pl.Int32)
        return x.rolling_sum_by("ts", f"{label_delay_days}d", closed="left").over("merchant_id")

    merch = (
        cust.sort("merchant_id", "ts")
        .with_columns(
            _f_all=(fraud.cum_sum() - fraud).over("merchant_id"),
            _f_recent=_recent(fraud),
            _n_all=(pl.col("one").cum_sum() - 1).over("merchant_id"),
            _n_recent=_recent(pl.col("one")),
        )
        .with_columns(
            merchant_txn_count=pl.col("_n_all") - pl.col("_n_recent"),
            # Bayesian-smoothed fraud rate of matured (labelled) past transactions
            merchant_fraud_rate=(pl.col("_f_all") - pl.col("_f_recent") + 0.2)
            / (pl.col("_n_all") - pl.col("_n_recent") + 20.0),
        )
    )
    return merch.select("txn_id", "ts", "customer_id", "amount", *FEATURE_COLUMNS, "is_fraud").sort("ts", "txn_id")


@dataclass(frozen=True)
class RiskModel:
    model: HistGradientBoostingClassifier
    feature_names: list[str]
    cutoff: datetime
    train_rows: int
    train_fraud_rate: float

    def key_metrics(self) -> dict[str, float]:
        return {"train_rows": float(self.train_rows), "train_fraud_rate": self.train_fraud_rate}


def risk_model(features: pl.DataFrame, holdout_days: int = 14, seed: int = 7, max_iter: int = 250) -> RiskModel:
    """Gradient-boosted classifier trained on everything before the last ``holdout_days``."""
    cutoff = features["ts"].max() - timedelta(days=holdout_days)
    train = features.filter(pl.col("ts") < cutoff)
    x = train.select(FEATURE_COLUMNS).to_numpy().astype(np.float64)
    y = train["is_fraud"].to_numpy()
    cat_mask = [c == "category_code" for c in FEATURE_COLUMNS]
    model = HistGradientBoostingClassifier(
        max_iter=max_iter,
        learning_rate=0.06,
        max_leaf_nodes=31,
        l2_regularization=1.0,
        categorical_features=cat_mask,
        early_stopping=False,
        random_state=seed,
    )
    with threadpool_limits(limits=1):  # single core: the framework owns parallelism
        model.fit(x, y)
    return RiskModel(model, list(FEATURE_COLUMNS), cutoff, len(train), float(y.mean()))


@dataclass(frozen=True)
class Scores:
    holdout: pl.DataFrame  # txn_id, ts, amount, is_fraud, score
    roc_auc: float
    pr_auc: float
    fraud_rate: float

    def key_metrics(self) -> dict[str, float]:
        return {
            "roc_auc": self.roc_auc,
            "pr_auc": self.pr_auc,
            "holdout_fraud_rate": self.fraud_rate,
            "holdout_rows": float(self.holdout.height),
        }


def score_rows(risk_model: RiskModel, features: pl.DataFrame) -> np.ndarray:
    """The fraud probability of every row of `features` (batch and online alike)."""
    x = features.select(risk_model.feature_names).to_numpy().astype(np.float64)
    with threadpool_limits(limits=1):
        return risk_model.model.predict_proba(x)[:, 1]


def scores(risk_model: RiskModel, features: pl.DataFrame) -> Scores:
    """Score the time-based holdout (transactions at or after the training cutoff)."""
    hold = features.filter(pl.col("ts") >= risk_model.cutoff)
    p = score_rows(risk_model, hold)
    y = hold["is_fraud"].to_numpy()
    out = hold.select("txn_id", "ts", "amount", "is_fraud").with_columns(score=pl.Series(p))
    return Scores(out, float(roc_auc_score(y, p)), float(average_precision_score(y, p)), float(y.mean()))


@dataclass(frozen=True)
class Decisions:
    review_threshold: float
    decline_threshold: float
    cost_policy: float  # on the evaluation half of the holdout
    cost_approve_all: float
    review_rate: float
    decline_rate: float
    fraud_caught: float  # share of fraud transactions reviewed or declined
    fraud_amount_caught: float  # share of fraud amount reviewed or declined
    eval_rows: int = field(default=0)

    def label(self, score: np.ndarray) -> list[str]:
        """The policy's action for each score: decline, review or approve."""
        return np.where(
            score >= self.decline_threshold, "decline", np.where(score >= self.review_threshold, "review", "approve")
        ).tolist()

    def key_metrics(self) -> dict[str, float]:
        saved = 1 - self.cost_policy / self.cost_approve_all if self.cost_approve_all else 0.0
        return {
            "cost_saved_pct": 100 * saved,
            "review_rate": self.review_rate,
            "decline_rate": self.decline_rate,
            "fraud_caught": self.fraud_caught,
            "fraud_amount_caught": self.fraud_amount_caught,
        }


def _policy_costs(
    score: np.ndarray,
    fraud: np.ndarray,
    amount: np.ndarray,
    grid: np.ndarray,
    review_cost: float,
    fraud_loss_rate: float,
    false_decline_cost: float,
    review_catch_rate: float,
) -> np.ndarray:
    """Cost matrix C[i, j] for review threshold grid[i] and decline threshold grid[j]."""
    loss = np.where(fraud, fraud_loss_rate * amount, 0.0)
    below = score[None, :] < grid[:, None]  # (g, n)
    lost = below @ loss  # fraud loss below each threshold
    n_below = below.sum(axis=1)
    declined_legit = (~below) @ (~fraud).astype(float)  # good customers declined
    cost = (
        lost[:, None]
        + (1 - review_catch_rate) * (lost[None, :] - lost[:, None])
        + review_cost * (n_below[None, :] - n_below[:, None])
        + false_decline_cost * declined_legit[None, :]
    )
    return np.where(grid[:, None] <= grid[None, :], cost, np.inf)


def decisions(
    scores: Scores,
    review_cost: float = 4.0,
    fraud_loss_rate: float = 1.0,
    false_decline_cost: float = 25.0,
    review_catch_rate: float = 0.8,
) -> Decisions:
    """Pick approve/review/decline thresholds minimising expected cost.

    Approved fraud loses ``fraud_loss_rate * amount``; a review costs
    ``review_cost`` and stops ``review_catch_rate`` of the fraud it sees;
    declining a good customer costs ``false_decline_cost``.  Thresholds are
    chosen on the earlier half of the holdout and evaluated on the later half.
    """
    h = scores.holdout.sort("ts")
    mid = h.height // 2
    fit, ev = [(p["score"].to_numpy(), p["is_fraud"].to_numpy(), p["amount"].to_numpy()) for p in (h[:mid], h[mid:])]
    grid = np.unique(np.concatenate([np.quantile(fit[0], np.linspace(0, 1, 301)), [1.01]]))
    args = (review_cost, fraud_loss_rate, false_decline_cost, review_catch_rate)
    i, j = np.unravel_index(np.argmin(_policy_costs(*fit, grid, *args)), (len(grid), len(grid)))
    s, f, a = ev
    flagged = s >= grid[i]
    return Decisions(
        review_threshold=float(grid[i]),
        decline_threshold=float(grid[j]),
        cost_policy=float(_policy_costs(s, f, a, grid[[i, j]], *args)[0, 1]),
        cost_approve_all=float(fraud_loss_rate * a[f].sum()),
        review_rate=float((flagged & (s < grid[j])).mean()),
        decline_rate=float((s >= grid[j]).mean()),
        fraud_caught=float(flagged[f].mean()) if f.any() else 0.0,
        fraud_amount_caught=float(a[f & flagged].sum() / a[f].sum()) if f.any() else 0.0,
        eval_rows=len(s),
    )


# -- the online path: one request at a time, with the last run's model and policy ------
# A request carries one transaction's features as `features` computes them from the
# customer's and merchant's history (a feature store's job online); null where the batch
# has null (a first transaction has no previous one).
FeatureRecord = create_model(
    "FeatureRecord",
    __config__=ConfigDict(extra="forbid"),
    txn_id=(int, Field(ge=0)),
    **{name: (float | None, Field(allow_inf_nan=False)) for name in FEATURE_COLUMNS},
)


def feature_frame(request: list[FeatureRecord]) -> pl.DataFrame:  # type: ignore[valid-type]
    """The request's records as the feature table the batch steps read."""
    rows = {name: [getattr(r, name) for r in request] for name in ("txn_id", *FEATURE_COLUMNS)}
    return pl.DataFrame(rows, schema={"txn_id": pl.Int64, **{n: pl.Float64 for n in FEATURE_COLUMNS}})


def decide(scores: np.ndarray, policy: Decisions) -> list[dict[str, object]]:
    """Each record's action under the last run's policy, with its score."""
    return [{"decision": d, "score": float(s)} for d, s in zip(policy.label(scores), scores, strict=True)]
