"""planflow's benchmarks (`make bench`); see bench/__main__.py."""


def percentile(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank), e.g. q=0.95 for p95."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]
