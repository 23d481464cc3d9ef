"""Train from an exported config (``sweeps train best.yaml``): the same loop a trial runs."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, TextIO

import torch

from sweeps.problems import Problems, as_int
from sweeps.spec import SpecError, read_yaml
from trainables.config import ConfigError, build_config
from trainables.registry import TrainerLoadError, load_trainer


def load_run_file(path: str | Path) -> dict[str, Any]:
    """Read and check an exported config; raise SpecError listing every problem."""
    data = read_yaml(path)
    problems = Problems()
    if not isinstance(data, dict):
        raise SpecError(str(path), [("", "an exported config must be a YAML mapping")])
    if not isinstance(data.get("config"), dict):
        problems.add("config", "missing: the mapping of trainer parameters")
    as_int(data.get("epochs"), "epochs", problems, minimum=1)
    try:
        trainer_cls = load_trainer(str(data.get("trainer")))
        if isinstance(data.get("config"), dict):
            build_config(trainer_cls.Config, data["config"], prefix="config.")
    except TrainerLoadError as exc:
        problems.add("trainer", str(exc))
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise SpecError(str(path), problems.items)
    return data


def train_from_file(
    data: dict[str, Any], epochs: int | None = None, save: str | Path | None = None, stream: TextIO | None = None
) -> dict[str, float]:
    """Train the exported config for its epochs; print each epoch; return the last metrics."""
    out = stream or sys.stdout
    torch.set_num_threads(max(1, int(data.get("threads", 1))))
    trainer_cls = load_trainer(str(data["trainer"]))
    trainer = trainer_cls(build_config(trainer_cls.Config, data["config"]))
    metric = data.get("metric", {}).get("name")
    total = int(epochs or data["epochs"])
    metrics: dict[str, float] = {}
    for epoch in range(1, total + 1):
        metrics = {**trainer.train_epoch(), **trainer.validate()}
        shown = {k: v for k, v in metrics.items() if k == metric or k.startswith("val")}
        out.write(f"epoch {epoch}/{total}  " + "  ".join(f"{k}={v:.5g}" for k, v in shown.items()) + "\n")
        out.flush()
    if save:
        torch.save({"trainer": trainer.state_dict(), "config": data["config"], "epoch": total}, save)
        out.write(f"saved {save}\n")
    recorded = data.get("metric", {}).get("value")
    if metric in metrics and isinstance(recorded, (int, float)) and total == int(data["epochs"]):
        diff = abs(metrics[metric] - recorded) / max(abs(recorded), 1e-12) * 100
        out.write(f"{metric}={metrics[metric]:.6g}; the sweep recorded {recorded:.6g} ({diff:.2f}% apart)\n")
    elif metric in metrics and not math.isfinite(metrics[metric]):
        out.write(f"{metric} is not finite\n")
    return metrics
