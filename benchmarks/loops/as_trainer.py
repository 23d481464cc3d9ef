"""The hand-written loops as function trainers: ``trainer: benchmarks.loops.as_trainer:wgan_gp``.

Each loop already computes its own per-step diagnostics under the names the detector reads, and
calls ``on_step(step, metrics)`` and ``on_epoch(epoch, metrics)``; the adapter hands those to
``run.step`` and ``run.report`` unchanged, so a sweep sees exactly what the corpus recorded. No
checkpoints: a restarted trial starts over.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def run_loop(
    name: str, config: Any, run: Any, validated: Callable[[int, dict[str, float]], None] | None = None
) -> None:
    """Train loop ``name`` with ``config``'s values over its DEFAULTS, its steps and epochs through ``run``.

    ``validated``: also called with each epoch's number and metrics, before ``run.report``.
    """
    module = importlib.import_module(f"benchmarks.loops.{name}")
    values = {key: config.get(key, default) for key, default in module.DEFAULTS.items()}
    values["epochs"] = run.epochs

    def on_step(step: int, metrics: dict[str, float]) -> None:
        extra = {k: v for k, v in metrics.items() if k != "loss"}
        run.step(loss=metrics.get("loss"), **extra)

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if validated is not None:
            validated(epoch, metrics)
        run.report(epoch, **{module.METRIC: metrics[module.METRIC]})

    module.train(values, on_step, on_epoch)


def _adapt(name: str) -> Callable[[Any, Any], None]:
    module = importlib.import_module(f"benchmarks.loops.{name}")

    def train(config: Any, run: Any) -> None:
        run_loop(name, config, run)

    train.metrics = (module.METRIC,)  # type: ignore[attr-defined]
    train.precisions = ("fp32", "bf16", "fp16")  # type: ignore[attr-defined]
    train.__doc__ = f"``benchmarks/loops/{name}.py`` as a function trainer (metric {module.METRIC}, {module.MODE})."
    return train


wgan_gp = _adapt("wgan_gp")
unet_ema = _adapt("unet_ema")
gan_own = _adapt("gan_own")
sr_onecycle = _adapt("sr_onecycle")
ddpm_tiny = _adapt("ddpm_tiny")
colorize_plateau = _adapt("colorize_plateau")
