"""Training curves drawn to PNG without matplotlib: a panel per curve with its lines, odd series still drawn."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from sweeps.tracking.curves import CurveHistory, draw_curves


def test_curves_png_has_a_panel_per_curve_with_lines_drawn(tmp_path: Path) -> None:
    history = CurveHistory()
    for step in range(1, 101):
        history.add(
            step,
            {
                "loss": 1.0 / step,
                "g/loss_scale": 2.0 ** (16 - min(step, 40) // 4),
                "d/loss_scale": 65536.0,
                "g/grad_norm": math.nan if step > 90 else 1.0 + step % 5,
                "output_std": 0.5,  # not a curve
            },
        )
    [path] = history.plot(tmp_path)
    image = Image.open(path).convert("RGB")
    assert image.size[1] == 3 * 150  # loss, loss_scale, grad_norm
    for panel in range(3):
        crop = image.crop((60, panel * 150 + 20, 470, panel * 150 + 130))
        colours = {c for _, c in crop.getcolors(maxcolors=100_000) or []}
        assert colours - {(255, 255, 255), (120, 120, 120), (0, 0, 0)}, f"panel {panel} has no line"


def test_curves_with_no_finite_value_or_one_point_still_draw(tmp_path: Path) -> None:
    path = draw_curves([("loss", {"loss": [(1, math.nan)]}), ("grad_norm", {"g": [(3, 2.0)]})], tmp_path / "c.png")
    assert Image.open(path).size == (480, 300)
    assert CurveHistory().plot(tmp_path) == []
