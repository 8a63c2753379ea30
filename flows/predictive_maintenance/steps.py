"""Predictive maintenance pipeline for a production line: pure computation steps.

Pipeline (step name -> consumes), a fork after ``sensor_features`` and a join:

    sensor_readings(seed, n_machines, n_stations)
      -> sensor_features(sensor_readings)
           -> anomaly_model(sensor_features, contamination, seed, n_trees) (branch 1)
           -> rul_model(sensor_features, n_folds, rul_cap, seed, max_iter) (branch 2)
      -> maintenance_plan(anomaly_model, rul_model, sensor_features,
                          crew_capacity, shift_hours, horizon_shifts, min_risk,
                          recent_cycles, safety_sd)

One cycle is one operating hour.  Machines degrade towards failure (true
remaining useful life, ``rul``, is kept for evaluation only), sensors carry
load effects and noise, and short anomalies (more frequent as wear grows) are
injected and labelled.  Half the machines are run-to-failure histories, the
others are still running and are the ones the plan schedules.

Default parameters: n_machines=200 (~55k readings).  Small test parameters:
``n_machines=24, n_folds=3, max_iter=30, n_trees=50`` (~6k readings, whole pipeline ~1.2 s).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.stats import norm
from sklearn.ensemble import HistGradientBoostingRegressor, IsolationForest
from threadpoolctl import threadpool_limits

__all__ = ["sensor_readings", "sensor_features", "anomaly_model", "rul_model", "maintenance_plan"]

SENSORS = ["vibration", "temperature", "pressure", "current"]
# sensor: (baseline mean, baseline spread, load gain, wear gain, wear exponent, noise sd)
_SENSOR_MODEL = {
    "vibration": (2.0, 0.3, 0.8, 2.5, 1.0, 0.35),
    "temperature": (60.0, 3.0, 15.0, 18.0, 1.0, 2.5),
    "pressure": (6.0, 0.4, -0.8, -1.5, 1.0, 0.25),
    "current": (12.0, 1.0, 8.0, 4.0, 2.0, 0.70),
}
_BASE_WINDOW = 60  # early-life cycles that define each machine's healthy baseline


def sensor_readings(seed: int = 11, n_machines: int = 200, n_stations: int = 6) -> pl.DataFrame:
    """Simulate hourly sensor readings of machines degrading towards failure."""
    rng = np.random.default_rng(seed)
    life = rng.integers(180, 480, n_machines)
    expo = rng.uniform(1.5, 3.0, n_machines)
    failed = rng.random(n_machines) < 0.5
    n_obs = np.where(failed, life, np.floor(rng.uniform(0.35, 0.97, n_machines) * life)).astype(int)
    mid = np.repeat(np.arange(n_machines), n_obs)
    cycle = np.concatenate([np.arange(k) for k in n_obs])
    wear = (cycle / life[mid]) ** expo[mid]
    shift_load = rng.choice([0.6, 0.8, 1.0], size=(n_machines, 480 // 8 + 1))
    load = shift_load[mid, cycle // 8]
    n = len(mid)
    # anomalies: short 1-3 cycle events, more likely as wear grows
    start = rng.random(n) < 0.004 * (1 + 4 * wear)
    dur = rng.integers(1, 4, n)
    anomaly = np.zeros(n, dtype=bool)
    for lag in range(3):
        idx = np.flatnonzero(start)[dur[start] > lag] + lag
        idx = idx[(idx < n)]
        anomaly[idx[mid[idx] == mid[idx - lag]]] = True
    hit = rng.random((n, len(SENSORS))) < 0.6
    hit[np.arange(n), rng.integers(0, len(SENSORS), n)] = True
    cols = {}
    for k, (s, (m, spread, g_load, g_wear, p, sd)) in enumerate(_SENSOR_MODEL.items()):
        base = rng.normal(m, spread, n_machines)[mid]
        x = base + g_load * load + g_wear * wear**p + rng.normal(0, sd, n)
        jump = rng.choice([-1, 1], n) * rng.uniform(5, 9, n) * sd
        cols[s] = np.round(np.where(anomaly & hit[:, k], x + jump, x), 3)
    return pl.DataFrame(
        {
            "machine_id": mid.astype(np.int32),
            "station": (mid % n_stations).astype(np.int8),
            "cycle": cycle.astype(np.int32),
            "load": load,
            **cols,
            "is_anomaly": anomaly,
            "failed": failed[mid],
            "rul": (life[mid] - cycle).astype(np.int32),
        }
    )


def sensor_features(sensor_readings: pl.DataFrame) -> pl.DataFrame:
    """Per-machine rolling features: load-adjusted levels, trends, variability, residual z-scores."""
    m = "machine_id"
    df = sensor_readings.sort(m, "cycle")
    t = pl.col("cycle").cast(pl.Float64)
    early = pl.col("cycle") < _BASE_WINDOW
    adj = [(pl.col(s) - pl.col(s).filter(early).mean().over(m, "load")).alias(f"{s}_adj") for s in SENSORS]
    df = df.with_columns(adj)
    exprs = []
    for s in (f"{s}_adj" for s in SENSORS):
        x = pl.col(s)
        mean50 = x.rolling_mean(50, min_samples=5).over(m)
        t_mean = t.rolling_mean(50, min_samples=5).over(m)
        cov = (t * x).rolling_mean(50, min_samples=5).over(m) - t_mean * mean50
        var_t = (t * t).rolling_mean(50, min_samples=5).over(m) - t_mean**2
        exprs += [
            x.rolling_mean(10, min_samples=1).over(m).alias(f"{s}_mean10"),
            mean50.alias(f"{s}_mean50"),
            x.ewm_mean(half_life=20).over(m).alias(f"{s}_ewm"),
            (cov / var_t.clip(1.0) * 100).alias(f"{s}_slope50"),
            x.rolling_std(10, min_samples=3).over(m).alias(f"{s}_std10"),
            ((x - x.rolling_median(11, min_samples=1).over(m)) / x.filter(early).std().over(m).clip(1e-3)).alias(
                f"{s}_z"
            ),
        ]
    return df.with_columns(exprs).with_columns(pl.col(pl.Float64).fill_nan(None).fill_null(0.0))


def _columns(df: pl.DataFrame, suffixes: tuple[str, ...]) -> list[str]:
    return [c for c in df.columns if c.endswith(suffixes)]


@dataclass(frozen=True)
class AnomalyModel:
    model: IsolationForest
    flags: pl.DataFrame  # machine_id, cycle, anomaly_score, flagged
    precision: float
    recall: float
    n_flagged: int

    def key_metrics(self) -> dict[str, float]:
        f1 = 2 * self.precision * self.recall / max(self.precision + self.recall, 1e-12)
        return {"precision": self.precision, "recall": self.recall, "f1": f1, "n_flagged": float(self.n_flagged)}


def anomaly_model(
    sensor_features: pl.DataFrame, contamination: float = 0.02, seed: int = 11, n_trees: int = 200
) -> AnomalyModel:
    """Isolation forest on residual z-scores; scored against the injected anomalies."""
    cols = _columns(sensor_features, ("_z",))
    x = sensor_features.select(cols).to_numpy()
    x = np.hstack([np.abs(x), np.abs(x).max(axis=1, keepdims=True)])
    model = IsolationForest(
        n_estimators=n_trees, max_samples=1024, contamination=contamination, random_state=seed, n_jobs=1
    ).fit(x)
    flagged = model.predict(x) == -1
    truth = sensor_features["is_anomaly"].to_numpy()
    flags = sensor_features.select("machine_id", "cycle").with_columns(
        anomaly_score=pl.Series(-model.score_samples(x)), flagged=pl.Series(flagged)
    )
    tp = int((flagged & truth).sum())
    return AnomalyModel(
        model, flags, tp / max(int(flagged.sum()), 1), tp / max(int(truth.sum()), 1), int(flagged.sum())
    )


@dataclass(frozen=True)
class RulModel:
    models: list[HistGradientBoostingRegressor]
    feature_names: list[str]
    folds: dict[int, int]  # machine_id -> fold whose model never saw it
    oof: pl.DataFrame  # machine_id, cycle, rul (capped truth), rul_pred
    latest: pl.DataFrame  # last reading of every machine with its prediction
    mae: float
    mae_critical: float  # on readings with true RUL <= 50 cycles
    resid_sd: float  # residual sd near failure, used for failure probabilities

    def key_metrics(self) -> dict[str, float]:
        return {"mae_cycles": self.mae, "mae_critical_cycles": self.mae_critical, "resid_sd": self.resid_sd}


def rul_model(
    sensor_features: pl.DataFrame, n_folds: int = 4, rul_cap: int = 150, seed: int = 11, max_iter: int = 150
) -> RulModel:
    """Remaining-useful-life regression with machine-wise cross-fitting (no machine in its own training set)."""
    feats = ["cycle", "load", *_columns(sensor_features, ("_mean10", "_mean50", "_ewm", "_slope50", "_std10"))]
    machines = np.unique(sensor_features["machine_id"].to_numpy())
    folds = np.random.default_rng(seed).permutation(len(machines)) % n_folds
    fold_of = dict(zip(machines.tolist(), folds.tolist(), strict=True))
    fold = sensor_features["machine_id"].replace_strict(fold_of).to_numpy()
    x = sensor_features.select(feats).to_numpy()
    y = np.minimum(sensor_features["rul"].to_numpy(), rul_cap).astype(float)
    pred, models = np.zeros(len(y)), []
    with threadpool_limits(limits=1):
        for k in range(n_folds):
            mdl = HistGradientBoostingRegressor(
                max_iter=max_iter, learning_rate=0.1, early_stopping=False, random_state=seed
            )
            models.append(mdl.fit(x[fold != k], y[fold != k]))
            pred[fold == k] = mdl.predict(x[fold == k])
    oof = sensor_features.select("machine_id", "station", "cycle", "failed").with_columns(
        rul=pl.Series(y), rul_true=sensor_features["rul"], rul_pred=pl.Series(np.clip(pred, 0, rul_cap))
    )
    crit = y <= 50
    return RulModel(
        models,
        feats,
        fold_of,
        oof,
        oof.group_by("machine_id").agg(pl.all().sort_by("cycle").last()),
        float(np.abs(pred - y).mean()),
        float(np.abs(pred - y)[crit].mean()),
        float(np.std((pred - y)[crit])),
    )


@dataclass(frozen=True)
class MaintenancePlan:
    schedule: pl.DataFrame  # one row per running machine: risk, shift (null = not scheduled)
    crew_capacity: int
    horizon_shifts: int
    failures_in_horizon: int  # ground truth, for evaluation
    failures_avoided: int
    expected_failures_avoided: float

    def key_metrics(self) -> dict[str, float]:
        s = self.schedule
        return {
            "machines_scheduled": float(s["shift"].is_not_null().sum()),
            "failures_in_horizon": float(self.failures_in_horizon),
            "failures_avoided": float(self.failures_avoided),
            "expected_failures_avoided": self.expected_failures_avoided,
            "max_jobs_per_shift": float(s["shift"].drop_nulls().value_counts()["count"].max() or 0),
        }


def _greedy_schedule(
    priority: np.ndarray, deadline: np.ndarray, eligible: np.ndarray, n_shifts: int, capacity: int
) -> np.ndarray:
    """Highest priority first, each into the latest shift <= its deadline with a free crew (-1 = none)."""
    load = np.zeros(n_shifts, dtype=int)
    shift = np.full(len(priority), -1)
    for i in np.argsort(-priority, kind="stable"):
        if not eligible[i]:
            continue
        free = np.flatnonzero(load[: deadline[i] + 1] < capacity)
        if free.size:
            shift[i] = free[-1]
            load[free[-1]] += 1
    return shift


def maintenance_plan(
    anomaly_model: AnomalyModel,
    rul_model: RulModel,
    sensor_features: pl.DataFrame,
    crew_capacity: int = 3,
    shift_hours: int = 8,
    horizon_shifts: int = 9,
    min_risk: float = 0.2,
    recent_cycles: int = 48,
    safety_sd: float = 1.0,
) -> MaintenancePlan:
    """Join both branches: score each running machine's failure risk and fit jobs into crew shifts."""
    horizon = shift_hours * horizon_shifts
    now = sensor_features.group_by("machine_id").agg(pl.col("cycle").max().alias("now"))
    recent = (
        anomaly_model.flags.join(now, on="machine_id")
        .filter(pl.col("cycle") > pl.col("now") - recent_cycles)
        .group_by("machine_id")
        .agg(pl.col("flagged").sum().alias("recent_anomalies"))
    )
    m = (
        rul_model.latest.filter(~pl.col("failed"))
        .join(recent, on="machine_id", how="left")
        .with_columns(pl.col("recent_anomalies").fill_null(0))
        .sort("machine_id")
    )
    sd = max(rul_model.resid_sd, 1.0)
    rul_pred, anomalies = m["rul_pred"].to_numpy(), m["recent_anomalies"].to_numpy()
    p_fail = norm.cdf((horizon - rul_pred) / sd)
    risk = 1 - (1 - p_fail) * (1 - np.minimum(0.1 * anomalies, 0.5))
    deadline = np.clip((rul_pred - safety_sd * sd) // shift_hours, 0, horizon_shifts - 1).astype(int)
    shift = _greedy_schedule(risk, deadline, risk >= min_risk, horizon_shifts, crew_capacity)
    rul_true = m["rul_true"].to_numpy()
    fails = rul_true <= horizon
    saved = fails & (shift >= 0) & (shift * shift_hours < rul_true)
    schedule = m.select("machine_id", "station", "cycle", "rul_pred", "rul_true", "recent_anomalies").with_columns(
        risk=pl.Series(risk),
        p_fail=pl.Series(p_fail),
        deadline_shift=pl.Series(deadline),
        shift=pl.Series([int(v) if v >= 0 else None for v in shift], dtype=pl.Int32),
    )
    # a scheduled job avoids a failure that would have happened after its shift starts, within the horizon
    p_avoid = p_fail - norm.cdf((shift * shift_hours - rul_pred) / sd)
    return MaintenancePlan(
        schedule, crew_capacity, horizon_shifts, int(fails.sum()), int(saved.sum()), float(p_avoid[shift >= 0].sum())
    )
