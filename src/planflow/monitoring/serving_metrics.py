"""The metrics of `planflow serve`, declared once, in a registry per service (tests read it).

Request latency, requests and errors by reason, and the model in use: whether one is
loaded, when the run it came from ended (its version), swaps and failed loads.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ERROR_REASONS = ("bad_request", "too_large", "too_slow", "not_ready", "internal")


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, pipeline: str = "") -> None:
        self.pipeline = pipeline
        self.registry = registry or CollectorRegistry()
        labels = ["pipeline"]
        r = self.registry
        self.latency = Histogram(
            "planflow_serving_request_duration_seconds",
            "Time to answer a /predict request (seconds).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(self.pipeline)
        self.requests = Counter(
            "planflow_serving_requests_total", "/predict requests answered or refused.", labels, registry=r
        ).labels(self.pipeline)
        errors = Counter(
            "planflow_serving_errors_total",
            "/predict requests refused or failed, by reason.",
            [*labels, "reason"],
            registry=r,
        )
        self.errors = {reason: errors.labels(self.pipeline, reason) for reason in ERROR_REASONS}
        self.model_loaded = Gauge(
            "planflow_serving_model_loaded", "1 while a model (a run's outputs) is loaded.", labels, registry=r
        ).labels(self.pipeline)
        self.model_version = Gauge(
            "planflow_serving_model_run_end_timestamp_seconds",
            "When the run whose outputs are served ended (the model's version).",
            labels,
            registry=r,
        ).labels(self.pipeline)
        self.swaps = Counter(
            "planflow_serving_model_swaps_total", "Models loaded (the first one included).", labels, registry=r
        ).labels(self.pipeline)
        self.load_failures = Counter(
            "planflow_serving_model_load_failures_total",
            "Attempts to load a newer run's outputs that failed (the previous model stays).",
            labels,
            registry=r,
        ).labels(self.pipeline)
        self.load_failing = Gauge(
            "planflow_serving_model_load_failing",
            "1 while the newest Completed run's outputs cannot be loaded.",
            labels,
            registry=r,
        ).labels(self.pipeline)
        self.requests.inc(0)
        for counter in self.errors.values():
            counter.inc(0)
