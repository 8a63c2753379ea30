"""Bytes and time of stored results: planflow's serializer against Prefect's default
(cloudpickle, base64) on the three example pipelines at their default parameters; and
what caching saves: the compute time of the steps that opt in (`cache="inputs"`)
against reading their results back.

    python -m bench.bench_results      # writes bench/results/results.md|json

No server: each step's function is called in this process, and each output is written
and read as Prefect would (the serializer's bytes are what a result file holds, beside
a few hundred bytes of metadata).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect.serializers import PickleSerializer

from planflow.core import discovery
from planflow.prefect.serializer import PlanflowSerializer

EXAMPLES = ("fraud-risk", "predictive-maintenance", "image-classification")
OUT = Path(__file__).parent / "results"
REPEAT = 3


def _best(fn: Any) -> float:
    times = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(name: str) -> dict[str, Any]:
    pipeline = discovery.get(name)
    params = pipeline.resolve_params({})
    outputs: dict[str, Any] = {}
    rows, serializers = [], {"pickle": PickleSerializer(), "planflow": PlanflowSerializer()}
    for step in pipeline.topological_order():
        component = pipeline.steps[step].component
        kwargs = pipeline.step_kwargs(step, params, outputs)
        started = time.perf_counter()
        outputs[step] = component.fn(**kwargs)
        compute = time.perf_counter() - started
        row: dict[str, Any] = {"step": step, "type": type(outputs[step]).__name__, "compute_s": compute}
        row["cached"] = getattr(component, "cache_mode", None) == "inputs"
        for label, serializer in serializers.items():
            blob = serializer.dumps(outputs[step])
            row[f"{label}_bytes"] = len(blob)
            row[f"{label}_write_s"] = _best(lambda s=serializer, o=outputs[step]: s.dumps(o))
            row[f"{label}_read_s"] = _best(lambda s=serializer, b=blob: s.loads(b))
        rows.append(row)
    total = {k: sum(r[k] for r in rows) for k in rows[0] if k.endswith(("_bytes", "_s"))}
    cached = [r for r in rows if r["cached"]]
    return {
        "pipeline": name,
        "steps": rows,
        "total": total,
        "cached_compute_s": sum(r["compute_s"] for r in cached),
        "cached_read_s": sum(r["planflow_read_s"] for r in cached),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "# Stored results: planflow's serializer against Prefect's pickle",
        "",
        "| pipeline | pickle bytes | planflow bytes | smaller by | write+read pickle (s) | write+read planflow (s) "
        "| cached steps: compute (s) | read back (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r["total"]
        lines.append(
            f"| {r['pipeline']} | {t['pickle_bytes']:,} | {t['planflow_bytes']:,} "
            f"| {t['pickle_bytes'] / t['planflow_bytes']:.1f}x | {t['pickle_write_s'] + t['pickle_read_s']:.3f} "
            f"| {t['planflow_write_s'] + t['planflow_read_s']:.3f} | {r['cached_compute_s']:.2f} "
            f"| {r['cached_read_s']:.3f} |"
        )
    lines += [
        "",
        "Per step:",
        "",
        "| pipeline | step | type | pickle bytes | planflow bytes |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        for s in r["steps"]:
            lines.append(
                f"| {r['pipeline']} | {s['step']} | {s['type']} | {s['pickle_bytes']:,} | {s['planflow_bytes']:,} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    results = [measure(name) for name in EXAMPLES]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (OUT / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
