"""The baseline of bench_serving: a plain FastAPI endpoint calling fraud-risk's three
online functions with the same model, loaded from the same run, and nothing else.

    python -m bench.serving_baseline --port 8010
"""

import argparse
import asyncio

import uvicorn
from fastapi import FastAPI
from prefect.client.orchestration import get_client

from planflow.core import discovery
from planflow.serving.loader import read_latest_run


async def _outputs() -> dict:
    async with get_client() as client:
        return (await read_latest_run(client, "fraud-risk", ["risk_model", "decisions"])).outputs


def build() -> FastAPI:
    discovery.use_project_imports()
    from flows.fraud_risk import steps  # noqa: PLC0415  (the project's module, on sys.path now)

    outputs = asyncio.run(_outputs())
    model, policy = outputs["risk_model"], outputs["decisions"]
    app = FastAPI()
    record = steps.FeatureRecord

    # no `from __future__ import annotations` here: FastAPI must see the record type itself
    @app.post("/predict")
    async def predict(body: record) -> dict:  # type: ignore[valid-type]
        answers = steps.decide(steps.score_rows(model, steps.feature_frame([body])), policy)
        return {"prediction": answers[0]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
