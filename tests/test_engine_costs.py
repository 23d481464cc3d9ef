"""The engine's cheap paths: SQLite stores in WAL mode, curves drawn without matplotlib."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import mlflow
from PIL import Image

from sweeps.curves import draw_curves
from sweeps.record import CurveHistory
from sweeps.spec import validate_spec
from sweeps.store import new_sweep_dir
from sweeps.study import create_study
from sweeps.tracking import client


def journal_mode(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])


def test_mlflow_and_optuna_sqlite_stores_are_written_in_wal_mode(tmp_path: Path) -> None:
    client(f"sqlite:///{tmp_path}/mlflow.db").create_experiment("wal")
    spec = validate_spec(
        {
            "name": "wal",
            "trainer": "tests.toy_trainer:ToyTrainer",
            "metric": {"name": "val_loss", "mode": "min"},
            "params": {"lr": {"type": "float", "low": 1e-4, "high": 1.0}},
        },
        "<test>",
        [],
    )
    sweep = new_sweep_dir(tmp_path / "runs", "wal")
    create_study(sweep, spec).ask()
    assert journal_mode(tmp_path / "mlflow.db") == "wal"
    assert journal_mode(sweep.path / "optuna.db") == "wal"
    # and MLflow's own reader (no use_wal in this process path) still reads what was written
    assert mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("wal") is not None


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
