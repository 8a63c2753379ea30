"""Self-healing: the flows planflow's automations start when an alert fires or a run
fails, and what they need. Nothing is imported here; the modules, in the order an alert
goes through them:

- `automations`: the Prefect automations and the remediation deployments they run;
  `worker`: the warm worker that runs those deployments' flow runs;
- `alert`: the flows' one typed parameter (`AlertEvent`) and the automations' templates;
- `retry`, `failover`, `rescale`: the three remediation flows (`flows`: by action);
  `pool_alert`: the failover and rescale prologue and their re-checks;
- `guard`: whether to act now (attempt ledger, cooldown, rate limit, dry run), within the
  bounds of the AlertRoute blocks (`planflow.prefect.blocks.alert_route`);
- `pools`: what the flows read about a work pool; `planning`: what they ask the planner;
  `scaling` and `kube`: where extra workers come from;
- `audit`: the events, metrics and artifact every remediation leaves;
- `scenarios`, `heal_watch`, `demo_pipeline`: `planflow demo heal`.
"""
