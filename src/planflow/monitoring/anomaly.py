"""Anomaly detection: each component's duration against its own baseline, each
pipeline's failure rate against its own history.

Fixed thresholds (alerts.py) say nothing about a component that suddenly takes three
times its usual time while staying under any hand-set line. These rules learn the
usual from Prometheus' own history, all generated from thresholds.yml:

- **Baseline** (recording rules, per pipeline, component and pool): the median and the
  spread (interquartile range, at least `anomaly_min_spread_ratio` of the median) of the
  component's latest duration over `anomaly_baseline_window`, ending `anomaly_window`
  ago so that the anomaly being judged does not pull its own baseline. Only with at
  least `anomaly_min_history_runs` runs in that window.
- **Deviation**: (latest duration - median) / spread, in spreads.
- **PlanflowComponentDurationAnomaly**: the deviation stayed above `anomaly_spreads`
  throughout `anomaly_window` while at least `anomaly_runs` - 1 more runs started in it:
  that many runs in a row were slow (one slow run is noise). Slower only: a faster run
  is a cached or skipped step more often than a problem.
- **PlanflowPipelineFailureRateAnomaly**: a pipeline's failed share over
  `failure_rate_window` exceeds `failure_rate_anomaly_factor` x its share over the
  baseline window before it, plus `failure_rate_anomaly_increase`, with enough runs in
  both windows. A pipeline that always fails half of its runs is not an anomaly (the
  pool's PlanflowPoolFailureRateHigh speaks of that); one that never failed and now
  fails most runs is.

The baselines are time-weighted (a gauge holds the latest run's figure until the next
run) and adapt: a lasting change becomes the new baseline after a baseline window.
Routing: notify-only. Both alerts go to the human receiver and to the bridge (a Prefect
event in the event feed; their AlertRoute defaults to `none`, so no remediation runs)
and are drawn as annotations on the pipelines dashboard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planflow.monitoring.alert_rule import EXPORTER, REMEDIATION_POOL, AlertRule, Scenario, sel
from planflow.monitoring.thresholds import Params, seconds

PUSHED = {"job": "planflow", "instance": ""}
KEY = "job, instance, pipeline, component, pool"
LAST = "planflow_component_last_duration_seconds"
STARTED = "planflow_component_start_timestamp_seconds"
FINISHED = "planflow_prefect_flow_runs_finished_total"
NOT_REMEDIATION = f'work_pool!="{REMEDIATION_POOL}"'
BASELINE = "[{{{anomaly_baseline_window}}}] offset {{{anomaly_window}}}"

MEDIAN = "planflow:component_duration_seconds:baseline_median"
SPREAD = "planflow:component_duration_seconds:baseline_spread"
DEVIATION = "planflow:component_duration_seconds:deviation_spreads"
RUNS_RECENT = "planflow:pipeline_runs_finished:recent"
RUNS_BASELINE = "planflow:pipeline_runs_finished:baseline"
RATIO_RECENT = "planflow:pipeline_failure_ratio:recent"
RATIO_BASELINE = "planflow:pipeline_failure_ratio:baseline"


@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str  # with {{{placeholders}}} from thresholds.yml


def _failed_share(window: str) -> str:
    """Failed or crashed / finished flow runs per flow over `window` (0 when none failed)."""
    failed = f'sum by (flow) (increase({FINISHED}{{state=~"failed|crashed", {NOT_REMEDIATION}}}{window}))'
    every = f'sum by (flow) (increase({FINISHED}{{{NOT_REMEDIATION}, state!="oom_killed"}}{window}))'
    return f"(\n  {failed}\n  or on (flow) 0 * {every}\n)\n/ ({every} > 0)"


RECORDING_RULES = [
    RecordingRule(
        MEDIAN,
        f"quantile_over_time(0.5, {LAST}{BASELINE})\n"
        f"and on ({KEY}) changes({STARTED}{BASELINE}) >= {{{{{{anomaly_min_history_runs}}}}}} - 1",
    ),
    RecordingRule(
        SPREAD,
        "(\n"
        f"  quantile_over_time(0.75, {LAST}{BASELINE}) - quantile_over_time(0.25, {LAST}{BASELINE})\n"
        f") >= {{{{{{anomaly_min_spread_ratio}}}}}} * {MEDIAN}\n"
        f"or {{{{{{anomaly_min_spread_ratio}}}}}} * {MEDIAN}",
    ),
    RecordingRule(DEVIATION, f"({LAST} - {MEDIAN}) / ({SPREAD} > 0)"),
    RecordingRule(
        RUNS_RECENT, f"sum by (flow) (increase({FINISHED}{{{NOT_REMEDIATION}}}[{{{{{{failure_rate_window}}}}}}]))"
    ),
    RecordingRule(
        RUNS_BASELINE,
        f"sum by (flow) (increase({FINISHED}{{{NOT_REMEDIATION}}}"
        "[{{{anomaly_baseline_window}}}] offset {{{failure_rate_window}}}))",
    ),
    RecordingRule(RATIO_RECENT, _failed_share("[{{{failure_rate_window}}}]")),
    RecordingRule(RATIO_BASELINE, _failed_share("[{{{anomaly_baseline_window}}}] offset {{{failure_rate_window}}}")),
]


def _steps(p: Params, value: int) -> int:
    """`value` seconds rounded up to whole scrape steps (at least one)."""
    return max(1, math.ceil(value / p.step))


def _held(values: list[float], samples: int) -> str:
    """Each value held for `samples` samples, in promtool's notation (`10x1` is 10 10)."""
    return " ".join(f"{v:g}x{samples - 1}" if samples > 1 else f"{v:g}" for v in values)


def _duration_scenario(p: Params) -> Scenario:
    """Runs every `gap`: a long noisy baseline, then `risk_model` keeps taking three times
    as long (it alerts) while `features` has one slow run amid normal ones (it does not)."""
    window = seconds(p.raw["anomaly_window"])
    runs_needed = int(p.thresholds["anomaly_runs"])
    gap = _steps(p, window // (2 * runs_needed + 4))  # samples between run starts
    # a baseline long enough that the slow runs seen by the time the alert fires (`for`
    # and two evaluations) are under a tenth of it, and not longer: promtool evaluates
    # every rule at every step of the series
    settle = p.for_ + 2 * p.eval
    history = max(int(p.thresholds["anomaly_min_history_runs"]), math.ceil(10 * settle / (gap * p.step)))
    slow_runs = math.ceil((window + settle) / (gap * p.step)) + 2
    noise = (10.0, 11.0, 9.0, 10.5, 9.5, 10.2)
    baseline = [noise[i % len(noise)] for i in range(history)]
    slow = baseline + [3 * noise[i % len(noise)] for i in range(slow_runs)]
    spiky = baseline + [30.0 if i == 1 else noise[i % len(noise)] for i in range(slow_runs)]
    starts = [float(i * gap * p.step) for i in range(len(slow))]
    out = []
    for component, durations in (("risk_model", slow), ("features", spiky)):
        key = {**PUSHED, "pipeline": "fraud-risk", "component": component, "pool": "local"}
        out += [(sel(LAST, key), _held(durations, gap)), (sel(STARTED, key), _held(starts, gap))]
    slowed_at = history * gap * p.step  # the first slow run's start
    fire = slowed_at + window + settle
    return Scenario(
        out,
        fire,
        {**PUSHED, "pipeline": "fraud-risk", "component": "risk_model", "pool": "local"},
        # at the end of the baseline; after the first slow run (not yet enough in a row)
        quiet_at=[slowed_at - p.step, slowed_at + gap * p.step],
    )


def _failure_rate_scenario(p: Params) -> Scenario:
    """`fraud-risk` failed 1 run in 10 and now fails 7 in 10 (it alerts); `flaky` always
    failed half of its runs and still does (it does not)."""
    recent = seconds(p.raw["failure_rate_window"])
    baseline = min(seconds(p.raw["anomaly_baseline_window"]), 4 * recent)
    before = _steps(p, baseline + recent)  # samples of the usual failure rate
    after = _steps(p, recent + p.for_) + 10
    # finished runs per sample: enough in each window for the minimum run counts
    per_sample = 1  # finished runs per sample: plenty in each window for the minimum run counts
    rates = {"fraud-risk": ((0.9, 0.1), (0.3, 0.7)), "flaky": ((0.5, 0.5), (0.5, 0.5))}
    out = []
    for flow, ((ok_before, bad_before), (ok_after, bad_after)) in rates.items():
        labels = {**EXPORTER, "flow": flow, "deployment": "nightly", "deployment_id": "d1", "work_pool": "local"}
        for state, rate_before, rate_after in (("completed", ok_before, ok_after), ("failed", bad_before, bad_after)):
            a, b = per_sample * rate_before, per_sample * rate_after
            turn = before * a
            out.append((sel(FINISHED, {**labels, "state": state}), f"0+{a:g}x{before} {turn + b:g}+{b:g}x{after}"))
    changed_at = before * p.step
    return Scenario(
        out,
        changed_at + recent + p.for_ + 2 * p.eval,
        {"flow": "fraud-risk", "pipeline": "fraud-risk"},
        quiet_at=[changed_at - p.step],
    )


ANOMALY_ALERTS = [
    AlertRule(
        "PlanflowComponentDurationAnomaly",
        "info",
        "planflow-pipelines",
        f"min_over_time({DEVIATION}[{{{{{{anomaly_window}}}}}}]) > {{{{{{anomaly_spreads}}}}}}\n"
        f"and on ({KEY}) changes({STARTED}[{{{{{{anomaly_window}}}}}}]) >= {{{{{{anomaly_runs}}}}}} - 1",
        "Component {{ $labels.component }} of {{ $labels.pipeline }} is much slower than usual",
        "Component {{ $labels.component }} of pipeline {{ $labels.pipeline }} on pool {{ $labels.pool }} "
        "took more than {{{anomaly_spreads}}} spreads above its median duration (baseline: "
        "{{{anomaly_baseline_window}}} before the last {{{anomaly_window}}}) in {{{anomaly_runs}}} or more "
        "runs in a row.",
        _duration_scenario,
        to_bridge=True,
    ),
    AlertRule(
        "PlanflowPipelineFailureRateAnomaly",
        "info",
        "planflow-pipelines",
        "label_replace(\n"
        f"  {RATIO_RECENT}\n"
        f"    > {{{{{{failure_rate_anomaly_factor}}}}}} * {RATIO_BASELINE}"
        " + {{{failure_rate_anomaly_increase}}}\n"
        f"  and on (flow) {RUNS_RECENT} >= {{{{{{failure_rate_min_runs}}}}}}\n"
        f"  and on (flow) {RUNS_BASELINE} >= {{{{{{anomaly_min_history_runs}}}}}},\n"
        '  "pipeline", "$1", "flow", "(.+)"\n)',
        "Pipeline {{ $labels.pipeline }} fails far more often than it used to",
        "The share of failed runs of {{ $labels.pipeline }} in the last "
        "{{{failure_rate_window}}} is more than {{{failure_rate_anomaly_factor}}} times its share over the "
        "{{{anomaly_baseline_window}}} before, plus {{{failure_rate_anomaly_increase}}}.",
        _failure_rate_scenario,
        to_bridge=True,
    ),
]
