"""The Ray Tune trainable: runs one trainer for its epochs inside a trial process.

It logs each epoch's metrics to the trial's MLflow run before reporting them to Ray (so a
trial ASHA stops has lost nothing), checkpoints every epoch, resumes from Ray's checkpoint
after a restart, and records its own failure with the traceback.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from sweeps.state import ENGINE_KEY
from sweeps.tracking import TrialLogger
from trainables.config import build_config
from trainables.registry import load_trainer

CHECKPOINT_FILE = "trainer.pt"


class MetricMissingError(RuntimeError):
    """The trainer's results lack the metric the sweep optimizes."""


def run_trial(config: dict[str, Any]) -> None:
    """Train one trial: ``config`` holds trainer parameters plus the engine's own entry."""
    engine = config[ENGINE_KEY]
    params = {key: value for key, value in config.items() if key != ENGINE_KEY}
    logger = TrialLogger(engine["tracking_uri"], engine["run_id"])
    try:
        _train(engine, params, logger)
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            logger.log_failure(exc)
        raise


def _train(engine: dict[str, Any], params: dict[str, Any], logger: TrialLogger) -> None:
    torch.set_num_threads(max(1, int(engine.get("threads", 1))))
    trainer_cls = load_trainer(engine["trainer"])
    trainer = trainer_cls(build_config(trainer_cls.Config, params))
    metric, epochs = engine["metric"], int(engine["epochs"])
    done = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=False)
        trainer.load_state_dict(state["trainer"])
        done = int(state["epoch"])
    else:
        logger.log_config(params)
    for epoch in range(done + 1, epochs + 1):
        metrics = {**trainer.train_epoch(), **trainer.validate()}
        if metric not in metrics:
            raise MetricMissingError(
                f"metric {metric!r} not produced by trainer {engine['trainer']!r} "
                f"(it reports: {', '.join(sorted(metrics))})"
            )
        logger.log_metrics(metrics, step=epoch)
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"trainer": trainer.state_dict(), "epoch": epoch}, Path(folder) / CHECKPOINT_FILE)
            tune.report({**metrics, "epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(folder))
