"""A trial's step curves (loss, loss scale, gradient norm) drawn as one PNG with Pillow.

Matplotlib spent most of a tiny trial's recording time laying out tick labels (0.3 to 0.6 s a
plot here); these panels are plain lines in a frame with their range written at the ends,
drawn in a few milliseconds. The values themselves are in MLflow, step by step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, PANEL, MARGIN, TOP = 480, 150, 58, 18
COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
Series = dict[str, list[tuple[int, float]]]


@dataclass
class _Axes:
    """Maps (step, value) to pixels inside ``box``; values on a log scale when ``log``."""

    box: tuple[int, int, int, int]
    first: int
    last: int
    low: float
    high: float
    log: bool

    def scale(self, value: float) -> float:
        return math.log10(value) if self.log else value

    def xy(self, step: int, value: float) -> tuple[float, float]:
        left, top, right, bottom = self.box
        x = left + (step - self.first) / ((self.last - self.first) or 1) * (right - left)
        low, high = self.scale(self.low), self.scale(self.high)
        y = bottom - (self.scale(value) - low) / ((high - low) or 1.0) * (bottom - top)
        return x, y


def draw_curves(panels: list[tuple[str, Series]], path: Path) -> Path:
    """Write ``path``: one panel per ``(title, {series name: [(step, value), ...]})``, stacked.

    A panel whose values are all positive and span more than a factor of 20 is drawn on a log
    scale (said in its title); non-finite values are left out, as gaps are in MLflow's charts.
    """
    image = Image.new("RGB", (WIDTH, PANEL * len(panels)), "white")
    draw = ImageDraw.Draw(image)
    for row, (title, series) in enumerate(panels):
        top = row * PANEL + TOP
        _panel(draw, (MARGIN, top, WIDTH - 8, (row + 1) * PANEL - 18), title, series)
    image.save(path)
    return path


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, series: Series) -> None:
    finite = {name: [(s, v) for s, v in points if math.isfinite(v)] for name, points in sorted(series.items())}
    values = [v for points in finite.values() for _, v in points]
    steps = [s for points in finite.values() for s, _ in points]
    log = bool(values) and min(values) > 0 and max(values) / min(values) > 20
    draw.rectangle(box, outline=(120, 120, 120))
    draw.text((box[0], box[1] - 14), title + (" (log)" if log else ""), fill="black")
    if not values:
        draw.text((box[0] + 6, box[1] + 6), "no finite values", fill=(150, 0, 0))
        return
    axes = _Axes(box, min(steps), max(steps), min(values), max(values), log)
    for index, (name, points) in enumerate(finite.items()):
        color = COLORS[index % len(COLORS)]
        if len(points) > 1:
            draw.line([axes.xy(s, v) for s, v in points], fill=color, width=1)
        elif points:
            x, y = axes.xy(*points[0])
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=color)
        if len(finite) > 1:
            draw.text((box[2] - 150, box[1] + 4 + 11 * index), name[-24:], fill=color)
    draw.text((4, box[1]), f"{axes.high:.3g}", fill="black")
    draw.text((4, box[3] - 10), f"{axes.low:.3g}", fill="black")
    draw.text((box[0], box[3] + 3), f"step {axes.first}", fill="black")
    draw.text((box[2] - 60, box[3] + 3), f"step {axes.last}", fill="black")


CURVES = ("loss", "loss_scale", "grad_norm")


class CurveHistory:
    """Per-step loss, loss-scale and gradient-norm values, kept to draw curves at the end."""

    def __init__(self) -> None:
        self.series: dict[str, list[tuple[int, float]]] = {}
        self.drawn = 0  # points in the last plot

    @property
    def points(self) -> int:
        """How many values are kept, over every series."""
        return sum(len(values) for values in self.series.values())

    @staticmethod
    def wants(key: str) -> bool:
        """Whether a step metric is drawn: ``loss``, ``*/loss_scale``, ``*/grad_norm``."""
        return key == "loss" or key.rsplit("/", 1)[-1] in ("loss_scale", "grad_norm")

    def add(self, step: int, metrics: dict[str, float]) -> None:
        """Keep this step's curve values (keys ``loss``, ``*/loss_scale``, ``*/grad_norm``).

        Steps before the last one kept are dropped: a restarted trial reruns steps it already has.
        """
        for key, value in metrics.items():
            if self.wants(key):
                series = self.series.setdefault(key, [])
                if not series or step >= series[-1][0]:
                    series.append((step, float(value)))

    def plot(self, folder: Path) -> list[Path]:
        """Write ``curves.png``: loss, loss scale and gradient norm against the step, one panel each."""
        panels = [(name, sorted(k for k in self.series if k == name or k.endswith("/" + name))) for name in CURVES]
        chosen = [(name, {key: self.series[key] for key in keys}) for name, keys in panels if keys]
        return [draw_curves(chosen, folder / "curves.png")] if chosen else []
