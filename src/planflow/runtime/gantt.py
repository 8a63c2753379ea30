"""A run's Gantt picture as PNG bytes, drawn with Pillow: cheap enough for every run.

Each run draws two (its plan, then planned against actual) on the thread that also
writes its artifacts; matplotlib took 0.5-2 s per picture of 40 components here (13 s
for 400), CPU-bound beside the dispatcher. Drawing rectangles and labels directly takes
a few milliseconds per picture and gives the same content: one row per component, the
planned bar (light) and the actual bar (dark, red when it failed) over it, a colour per
pool, the planned and actual makespans, a time axis, a legend and the title.

    >>> png = draw([Bar(0, "a", "local", 0.0, 2.0)], [], ["a"], 2.0, None, "plan")
    >>> png[:4] == b"\\x89PNG"
    True
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

WIDTH = 1000
ROW = 18  # pixels per component row, up to MAX_HEIGHT (then rows are squeezed)
MAX_HEIGHT = 1200
LEFT, RIGHT, TOP, BOTTOM = 110, 170, 46, 34  # margins: labels, legend, title, axis
MAX_LABELS = 60  # above this many rows, every k-th component is named
TAB10 = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
FAILED = (176, 0, 32)


@dataclass(frozen=True)
class Bar:
    row: int
    name: str
    pool: str
    start: float
    finish: float
    failed: bool = False


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _light(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(c + (255 - c) * 0.65) for c in colour)  # type: ignore[return-value]


def _step(span: float) -> float:
    """A round tick spacing giving about 8 ticks over `span`."""
    raw = span / 8 if span > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def draw(
    planned: list[Bar],
    actual: list[Bar],
    names: list[str],
    planned_makespan: float,
    actual_makespan: float | None,
    title: str,
) -> bytes:
    """The picture: `planned` and `actual` bars by row (0 = first of `names`, on top)."""
    rows = max(1, len(names))
    row_px = min(ROW, max(1.0, (MAX_HEIGHT - TOP - BOTTOM) / rows))
    height = int(TOP + BOTTOM + row_px * rows) + 1
    image = Image.new("RGB", (WIDTH, height), "white")
    pen = ImageDraw.Draw(image)
    small, text = _font(10), _font(12)
    end = 1.03 * max([planned_makespan, actual_makespan or 0.0] + [b.finish for b in planned + actual] + [1e-9])
    plot = WIDTH - LEFT - RIGHT

    def x(t: float) -> float:
        return LEFT + plot * max(0.0, t) / end

    step = _step(end)
    for k in range(int(end / step) + 1):  # grid and time axis
        tx = x(k * step)
        pen.line([(tx, TOP), (tx, height - BOTTOM)], fill=(225, 225, 225))
        pen.text((tx, height - BOTTOM + 4), f"{k * step:g}", fill="black", font=small, anchor="mt")
    pen.text((LEFT + plot / 2, height - 12), "seconds from the start of the run", fill="black", font=small, anchor="mm")
    pools = sorted({b.pool for b in planned + actual})
    colours = {p: TAB10[i % len(TAB10)] for i, p in enumerate(pools)}
    for bar in planned:
        top = TOP + bar.row * row_px
        pen.rectangle(
            [x(bar.start), top + row_px * 0.1, max(x(bar.finish), x(bar.start) + 1), top + row_px * 0.9],
            fill=_light(colours[bar.pool]),
            outline=colours[bar.pool] if row_px >= 6 else None,
        )
    for bar in actual:
        top = TOP + bar.row * row_px
        pen.rectangle(
            [x(bar.start), top + row_px * 0.32, max(x(bar.finish), x(bar.start) + 1), top + row_px * 0.68],
            fill=FAILED if bar.failed else colours[bar.pool],
        )
    every = max(1, -(-rows // MAX_LABELS))
    for row in range(0, len(names), every):
        y = TOP + (row + 0.5) * row_px
        pen.text((LEFT - 6, y), names[row][:16], fill="black", font=small, anchor="rm")
    lines = [(planned_makespan, (0, 0, 0), "planned makespan")]
    if actual_makespan is not None:
        lines.append((actual_makespan, FAILED, "actual makespan"))
    for t, colour, _ in lines:
        for y in range(TOP, height - BOTTOM, 8):  # dashed
            pen.line([(x(t), y), (x(t), min(y + 4, height - BOTTOM))], fill=colour, width=1)
    pen.rectangle([LEFT, TOP, LEFT + plot, height - BOTTOM], outline="black")
    legend = [(f"planned on {p}", _light(colours[p])) for p in pools]
    legend += [("actual", colours[pools[0]])] if actual and pools else []
    legend += [(label, colour) for _, colour, label in lines]
    for i, (label, colour) in enumerate(legend):
        y = TOP + 4 + 16 * i
        pen.rectangle([WIDTH - RIGHT + 10, y, WIDTH - RIGHT + 24, y + 10], fill=colour)
        pen.text((WIDTH - RIGHT + 30, y + 5), label[:22], fill="black", font=small, anchor="lm")
    for i, part in enumerate(title.splitlines()[:2]):
        pen.text((WIDTH / 2, 6 + 17 * i), part, fill="black", font=text, anchor="mt")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
