"""Fraud risk: synthetic card transactions -> polars features -> risk model -> scores -> policy.

Resource specs are measured at default parameters on a 2-core machine
(peak RSS ~0.3 GiB; `features` uses polars' threads), rounded up.
The data and its features are cached across runs (`cache="inputs"`): a run with the same
parameters reads them back and trains on them at once.
"""

from planflow import OnlinePath, Pipeline, component, to_flow

from flows.fraud_risk import steps

transactions = component(steps.transactions, cpu=1, mem_gib=0.5, est_seconds=1.5, cache="inputs")
features = component(steps.features, cpu=2, mem_gib=0.75, est_seconds=1.0, cache="inputs")
risk_model = component(steps.risk_model, cpu=1, mem_gib=1.0, est_seconds=6.0)
scores = component(steps.scores, cpu=1, mem_gib=0.75, est_seconds=1.0)
decisions = component(steps.decisions, cpu=1, mem_gib=0.5, est_seconds=0.5)

pipeline = Pipeline(
    "fraud-risk",
    [transactions, features, risk_model, scores, decisions],
    description="Card fraud: transaction features with polars, a gradient-boosted risk "
    "model (holdout ROC AUC), and a cost-minimising approve/review/decline policy.",
)
fraud_risk = to_flow(pipeline)

# The online path `planflow serve fraud-risk` answers: the same scoring function as the
# batch `scores`, with `risk_model` and the policy (`decisions`) of the last Completed run.
online = OnlinePath(
    pipeline,
    steps={"features": steps.feature_frame, "scores": steps.score_rows, "decisions": steps.decide},
    load={"risk_model": "risk_model", "policy": "decisions"},
)
