"""planflow's result serializer: typed, compact results in Prefect's result storage.

    >>> from prefect import flow
    >>> @flow(result_serializer=PlanflowSerializer())     # or result_serializer="planflow"
    ... def my_flow(): ...

What a component returns is written by its type, and read back as the same type:

- polars and pandas data frames and Arrow tables: Parquet, zstd-compressed;
- numpy arrays (not of dtype object): `np.save`'s format, zstd-compressed;
- anything else (models, dataclasses, dicts): cloudpickle, zstd-compressed.

Prefect keeps a result in a JSON record, so the bytes are base64 text, as Prefect's
pickle serializer's are (base85 would be 6% smaller but is pure Python: 20x slower). A Serializer
subclass with a `type` literal is registered under that name when its module is
imported: a process reading planflow results imports this module first (planflow's
flows do).

pandas and Arrow are optional: they are imported only if installed, and a value can only
be of their types when they are (`pip install planflow[frames]` adds them).
"""

from __future__ import annotations

import base64
import importlib
import io
import logging
import sys
from types import ModuleType
from typing import Any, Literal

import cloudpickle
import numpy as np
import polars as pl
import zstandard
from prefect.serializers import Serializer

from planflow.prefect.pickle_by_value import by_value_where_unimportable

MAGIC = b"planflow1"
ZSTD_LEVEL = 3
KINDS = ("polars", "pandas", "arrow", "numpy", "pickle")


class ResultFormatError(ValueError):
    """A stored blob is not one planflow's serializer wrote (or is damaged)."""


def _parquet(write: Any) -> bytes:
    buffer = io.BytesIO()
    write(buffer)
    return buffer.getvalue()


def _parquet_module() -> ModuleType | None:
    """pyarrow.parquet, imported when a frame needs it (pandas and pyarrow are optional and
    cost about half a second to import: a process that never holds a frame never pays it)."""
    try:
        return importlib.import_module("pyarrow.parquet")
    except ImportError:
        return None


def encode(obj: Any) -> tuple[str, bytes]:
    """The kind of `obj` and its compact binary form (before the text encoding)."""
    if isinstance(obj, pl.DataFrame):
        return "polars", _parquet(lambda b: obj.write_parquet(b, compression="zstd"))
    # A pandas frame or an Arrow table exists only if its library was imported already.
    # pyarrow.parquet is imported only for such a value, not for every value once pandas is loaded.
    pd, pa = sys.modules.get("pandas"), sys.modules.get("pyarrow")
    is_pandas = pd is not None and isinstance(obj, pd.DataFrame)
    is_arrow = pa is not None and isinstance(obj, pa.Table)
    pq = _parquet_module() if (is_pandas or is_arrow) else None
    if is_pandas and pq is not None:
        table = sys.modules["pyarrow"].Table.from_pandas(obj)  # keeps the index and dtypes in the schema metadata
        return "pandas", _parquet(lambda b: pq.write_table(table, b, compression="zstd"))
    if is_arrow and pq is not None:
        return "arrow", _parquet(lambda b: pq.write_table(obj, b, compression="zstd"))
    if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
        buffer = io.BytesIO()
        np.save(buffer, obj, allow_pickle=False)
        return "numpy", zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(buffer.getvalue())
    by_value_where_unimportable()  # e.g. a class of `flow.steps`, a deployment's entrypoint's relative import
    return "pickle", zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(cloudpickle.dumps(obj))


def decode(kind: str, data: bytes) -> Any:
    """The object `encode` turned into (`kind`, `data`)."""
    if kind == "polars":
        return pl.read_parquet(io.BytesIO(data))
    if kind in ("pandas", "arrow"):
        pq = _parquet_module()
        if pq is None:
            raise ResultFormatError(
                f"this result is a {kind} Parquet file and pyarrow is not installed. Fix: "
                "pip install 'planflow[frames]'"
            )
        table = pq.read_table(io.BytesIO(data))
        return table.to_pandas() if kind == "pandas" else table
    if kind == "numpy":
        return np.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(data)), allow_pickle=False)
    if kind == "pickle":
        return cloudpickle.loads(zstandard.ZstdDecompressor().decompress(data))
    raise ResultFormatError(f"unknown result kind {kind!r}; known kinds: {', '.join(KINDS)}")


class PlanflowSerializer(Serializer):
    """Frames as Parquet (zstd), numpy arrays compressed, everything else compressed
    cloudpickle; `type="planflow"` (so `result_serializer="planflow"` works too)."""

    type: Literal["planflow"] = "planflow"

    def dumps(self, obj: Any) -> bytes:
        try:
            kind, data = encode(obj)
        except Exception as exc:
            _say_not_stored(obj, exc)
            raise
        return MAGIC + b":" + kind.encode() + b":" + base64.b64encode(data)

    def loads(self, blob: bytes) -> Any:
        magic, _, rest = bytes(blob).partition(b":")
        kind, _, text = rest.partition(b":")
        if magic != MAGIC:
            raise ResultFormatError(
                f"result starts with {bytes(blob[:16])!r}, not {MAGIC!r}: it was not written by planflow's "
                "serializer. Fix: read it with the serializer named in its record (Prefect does this itself)"
            )
        return decode(kind.decode(), base64.b64decode(text))


def _say_not_stored(obj: Any, exc: Exception) -> None:
    """A step's output that cannot be stored, said in planflow's words in the step's log:
    Prefect's own warning names options a component does not take, and the run still
    completes, so what is lost (the retry's read-back, the cache) went unsaid."""
    from prefect.context import FlowRunContext, TaskRunContext  # noqa: PLC0415 (only on this rare path)
    from prefect.logging import get_run_logger  # noqa: PLC0415

    task, flow = TaskRunContext.get(), FlowRunContext.get()
    if task is not None:  # a step of an in-process run
        step, lost = task.task.name, "a retry of the run runs the step again and cache='inputs' cannot skip it"
    else:  # a component's own flow run (distributed mode)
        step = flow.flow.name if flow is not None else "?"
        lost = "the steps after it cannot read it"
    if type(obj).__module__.split(".")[0] in ("pandas", "pyarrow", "polars"):
        fix = "give its object columns one type Parquet stores (e.g. .astype(str))"
    else:
        fix = (
            "return plain data (numbers, strings, lists, dicts, arrays, data frames) or objects whose "
            "attributes pickle (no locks, open files, connections or clients)"
        )
    message = "step '%s' returned a %s that cannot be stored (%s: %s): %s. Fix: %s"
    args = (step, type(obj).__name__, type(exc).__name__, exc, lost, fix)
    try:
        get_run_logger().warning(message, *args)
    except Exception:  # noqa: BLE001 - no run context: the module's logger
        logging.getLogger(__name__).warning(message, *args)
