"""The alerts about `planflow serve`: latency SLO, error rate, no model, a model that
cannot be loaded, a replica down. They go to the human receiver (not the bridge:
nothing in Prefect acts on them); thresholds are in thresholds.yml.

Prometheus scrapes the replicas (job `planflow-serving`, ports.serving + 1 and + 2: the
replicas of `planflow serve --replicas 2 --port <ports.serving>`).
"""

from __future__ import annotations

import math

from planflow.monitoring.alert_rule import AlertRule, Scenario, sel, step_scenario
from planflow.monitoring.thresholds import Params, seconds

SERVING = {"job": "planflow-serving", "instance": "127.0.0.1:8001", "pipeline": "fraud-risk"}
UP = {"job": "planflow-serving", "instance": "127.0.0.1:8001"}
LATENCY = "planflow_serving_request_duration_seconds_bucket"
DASHBOARD = "planflow-pipelines"


def _counters(p: Params) -> tuple[int, int]:
    before = 10
    return before, math.ceil((p.for_ + seconds(p.raw["rate_window"])) / p.step) + 2 * before


def _latency(p: Params) -> Scenario:
    """Every request under the SLO bucket, then every one slower: fires, quiet before."""
    before, n = _counters(p)
    slo = str(p.thresholds["serving_latency_p99_seconds"])
    series = [
        (sel(LATENCY, {**SERVING, "le": slo}), f"0+10x{before} {10 * before}x{n}"),
        (sel(LATENCY, {**SERVING, "le": "1.0"}), f"0+10x{before} {10 * before}x{n}"),
        (sel(LATENCY, {**SERVING, "le": "+Inf"}), f"0+10x{before + n}"),
    ]
    crossing = (before + 1) * p.step
    window = seconds(p.raw["rate_window"])
    return Scenario(series, crossing + window + p.for_ + 2 * p.eval, {"pipeline": "fraud-risk"}, [crossing - p.step])


def _errors(p: Params) -> Scenario:
    """10 requests a sample all along; server errors none, then half of them."""
    before, n = _counters(p)
    series = [
        (sel("planflow_serving_requests_total", SERVING), f"0+10x{before + n}"),
        (sel("planflow_serving_errors_total", {**SERVING, "reason": "internal"}), f"0x{before} 0+5x{n}"),
        (sel("planflow_serving_errors_total", {**SERVING, "reason": "bad_request"}), f"0+9x{before + n}"),
    ]
    crossing = (before + 1) * p.step
    return Scenario(series, crossing + p.for_ + 2 * p.eval, {"pipeline": "fraud-risk"}, [crossing - p.step])


SERVING_ALERTS = [
    AlertRule(
        "PlanflowServingLatencyHigh",
        "warning",
        DASHBOARD,
        "histogram_quantile(0.99, sum by (pipeline, le) (rate(" + LATENCY + "[{{{rate_window}}}])))\n"
        "  > {{{serving_latency_p99_seconds}}}",
        "p99 latency of {{ $labels.pipeline }}'s /predict is over {{{serving_latency_p99_seconds}}} s",
        "The 99th percentile of /predict latency over {{{rate_window}}} is above the SLO of "
        "{{{serving_latency_p99_seconds}}} s (thresholds.yml: serving_latency_p99_seconds).",
        _latency,
    ),
    AlertRule(
        "PlanflowServingErrorRateHigh",
        "warning",
        DASHBOARD,
        'sum by (pipeline) (rate(planflow_serving_errors_total{reason=~"internal|not_ready"}[{{{rate_window}}}]))\n'
        "  / sum by (pipeline) (rate(planflow_serving_requests_total[{{{rate_window}}}]))\n"
        "  > {{{serving_error_ratio}}}",
        "{{ $labels.pipeline }}'s /predict fails more than {{{serving_error_ratio}}} of its requests",
        "Server-side failures (500, or 503 while no model is loaded) over {{{rate_window}}} are above "
        "{{{serving_error_ratio}}} of requests; client errors (400, 413, 422) are not counted.",
        _errors,
    ),
    AlertRule(
        "PlanflowServingNoModel",
        "critical",
        DASHBOARD,
        "planflow_serving_model_loaded == 0",
        "{{ $labels.instance }} serves {{ $labels.pipeline }} with no model loaded",
        "The replica is up but has no run's outputs loaded: it is not ready and answers 503. "
        "Usually the pipeline has no Completed run yet (Fix: planflow run <pipeline>).",
        step_scenario("planflow_serving_model_loaded", SERVING, 1, 0),
    ),
    AlertRule(
        "PlanflowServingModelLoadFailing",
        "warning",
        DASHBOARD,
        "planflow_serving_model_load_failing == 1",
        "{{ $labels.instance }} cannot load the newest run of {{ $labels.pipeline }}",
        "The newest Completed run's outputs cannot be read from result storage; the replica keeps "
        "serving the model it had. Its log (and /readyz `problem`) names the run and the step.",
        step_scenario("planflow_serving_model_load_failing", SERVING, 0, 1),
    ),
    AlertRule(
        "PlanflowServingReplicaDown",
        "critical",
        DASHBOARD,
        'up{job="planflow-serving"} == 0\n  and on (instance) max_over_time(up{job="planflow-serving"}[1h]) == 1',
        "Serving replica {{ $labels.instance }} is down",
        "Prometheus cannot scrape a replica that answered within the last hour. HAProxy sends its "
        "requests to the other replica; `planflow serve` starts it again.",
        step_scenario("up", UP, 1, 0),
    ),
]
