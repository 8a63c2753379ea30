"""A one-step pipeline with an online path, small enough to run in a second."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from planflow import OnlinePath, Pipeline, component


class Reading(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: float = Field(ge=0)


def scale(factor: float = 2.0) -> float:
    return factor


def predict(request: list[Reading], scale: float) -> list[float]:
    return [r.x * scale for r in request]


def make(name: str) -> OnlinePath:
    pipeline = Pipeline(name, [component(scale, cpu=0.5, mem_gib=0.1, est_seconds=0.5)])
    return OnlinePath(pipeline, steps={"predict": predict}, load=["scale"], max_batch=4)
