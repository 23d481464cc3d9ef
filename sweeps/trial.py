"""The Ray Tune trainable: runs one trainer for its epochs inside a trial process.

Every optimizer step goes through the divergence detector and into a buffer of step metrics;
each epoch's metrics join it. The buffer goes to the trial's MLflow run when a step or an epoch
ends a second or more after the last send, and always before a report to Ray (so a trial ASHA
stops has lost nothing); each report comes with a checkpoint, each epoch with a sample image
grid. A diverged trial stops within the step that fired the signal and ends with a last report
that says why; its last checkpoint, from before the onset, is kept. A failure is recorded with
its traceback.

An exception raised in the trial (a bug, a bad config, out of memory) ends it at once: it is
reported as the trial's last result, so Ray never retries it. Only a trial whose process or
node died reaches Ray's failure handling, which restarts it from its last checkpoint (up to
``budget.retries`` times) in a new process, on any node: epochs, step counts and the MLflow run
continue where the checkpoint was, nothing logged is lost or logged twice.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from ray import tune

from sweeps.divergence import Divergence, DivergenceDetector, DivergenceSettings
from sweeps.record import CurveHistory, environment_json, trainer_source
from sweeps.state import DIVERGED_KEY, ENGINE_KEY, FAILED_KEY, HISTORY_KEY
from sweeps.tracking import TrialLogger
from trainables.config import build_config
from trainables.registry import load_trainer

CHECKPOINT_FILE = "trainer.pt"
DELIVERY_TIMEOUT_S = 900.0  # as long as TrialLogger waits at the end of a trial


class MetricMissingError(RuntimeError):
    """The trainer's results lack the metric the sweep optimizes."""


class DivergedError(Exception):
    """Raised from the step hook to leave the trainer's loop at once."""

    def __init__(self, divergence: Divergence) -> None:
        super().__init__(divergence.reason)
        self.divergence = divergence


def divergence_result(divergence: Divergence) -> dict[str, Any]:
    """The engine's keys in a diverged trial's last report."""
    return {
        DIVERGED_KEY: 1.0,
        "sweep/signal": divergence.signal,
        "sweep/reason": divergence.reason,
        "sweep/step": divergence.step,
        "sweep/onset": divergence.onset,
    }


def run_trial(config: dict[str, Any]) -> None:
    """Train one trial: ``config`` holds trainer parameters plus the engine's own entry."""
    engine = config[ENGINE_KEY]
    if int(engine.get("workers", 1)) > 1:  # budget.workers_per_trial: Ray Train workers (sweeps/distributed.py)
        from sweeps.distributed import run_distributed_trial

        run_distributed_trial(config)
        return
    params = {key: value for key, value in config.items() if key != ENGINE_KEY}
    logger = TrialLogger(engine["tracking_uri"], engine["run_id"])
    curves = CurveHistory()
    try:
        _train(engine, params, logger, curves)
    except Exception as exc:  # noqa: BLE001 - any error in the trial ends it, recorded, without a retry
        logger.log_failure(exc)
        reason = failure_reason(exc)
        tune.report({engine["metric"]: math.nan, FAILED_KEY: 1.0, "sweep/reason": reason})
    finally:
        _log_curves(curves, logger)
        logger.close()


def step_hook(
    detector: DivergenceDetector,
    counts: dict[str, float],
    logger: TrialLogger | None,
    curves: CurveHistory,
    reduce: Callable[[dict[str, float]], dict[str, float]] | None = None,
) -> Callable[[int, dict[str, float]], None]:
    """The trainer's per-step hook: record the step (where there is a logger), count it, watch it.

    ``reduce`` turns one rank's values into the values every rank agrees on (multi-worker
    trials average them over ranks), so every rank's detector fires at the same step.
    """

    def on_step(step: int, metrics: dict[str, float]) -> None:
        values = reduce(metrics) if reduce is not None else metrics
        if logger is not None:
            logger.add_step(step, values)
            curves.add(step, values)
        counts["sweep/steps"] += 1
        counts["sweep/skipped_steps"] += float(any(v for k, v in values.items() if k.endswith("skipped")))
        found = detector.observe(step, values)
        if found is not None:
            raise DivergedError(found)

    return on_step


def failure_reason(exc: BaseException) -> str:
    """An exception's one line, e.g. ``ValueError: bad kernel``."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:5000]


def _detector(engine: dict[str, Any]) -> DivergenceDetector:
    raw = engine.get("divergence")
    fields = {f.name for f in dataclasses.fields(DivergenceSettings)}
    return DivergenceDetector(DivergenceSettings(**{k: v for k, v in raw.items() if k in fields}) if raw else None)


def _train(engine: dict[str, Any], params: dict[str, Any], logger: TrialLogger, curves: CurveHistory) -> None:
    torch.set_num_threads(max(1, int(engine.get("threads", 1))))
    trainer_cls = load_trainer(engine["trainer"])
    trainer = trainer_cls(build_config(trainer_cls.Config, params))
    metric, epochs = engine["metric"], int(engine["epochs"])
    detector = _detector(engine)

    counts = {"sweep/steps": 0.0, "sweep/skipped_steps": 0.0}
    on_step = step_hook(detector, counts, logger, curves)
    if hasattr(trainer, "on_step"):
        trainer.on_step = on_step
    done = _restore(trainer, logger, counts, curves)
    if done == 0 or not logger.has_artifact("config.yaml"):
        _log_provenance(engine, params, trainer_cls, trainer, logger)
    cadence = ReportCadence(engine, epochs)
    history: list[tuple[int, float]] = []  # (epoch, metric) since the last report
    for epoch in range(done + 1, epochs + 1):
        try:
            metrics = {**trainer.train_epoch(), **trainer.validate()}
        except DivergedError as diverged:
            logger.flush()
            result = {metric: math.nan, "epoch": epoch, **counts, **divergence_result(diverged.divergence)}
            tune.report({**result, HISTORY_KEY: history})
            return
        if metric not in metrics:
            raise MetricMissingError(
                f"metric {metric!r} not produced by trainer {engine['trainer']!r} "
                f"(it reports: {', '.join(sorted(metrics))})"
            )
        logger.log_metrics(metrics, step=epoch)
        _log_images(trainer, logger, epoch)
        history.append((epoch, float(metrics[metric])))
        if not cadence.due(epoch):
            continue
        # Tune may stop the trial at this report (ASHA, at a rung or at the last epoch) and end this
        # process without waiting for this thread: deliver what the epochs recorded first, curves too.
        _log_curves(curves, logger)
        logger.flush(timeout=DELIVERY_TIMEOUT_S)
        with tempfile.TemporaryDirectory() as folder:
            state = {"trainer": trainer.state_dict(), "epoch": epoch, "counts": counts}
            state["undelivered"] = logger.undelivered()  # resent after a restart if they never arrived
            torch.save(state, Path(folder) / CHECKPOINT_FILE)
            report = {**metrics, "epoch": epoch, **counts, HISTORY_KEY: history}
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))
        history = []
        cadence.reported()


class ReportCadence:
    """When a trial reports (and checkpoints): at ASHA's rungs, its last epoch, and every N seconds.

    Between those, epochs run without a round trip to the driver; their metrics still go to
    MLflow about every second (see ``TrialLogger``) and to Optuna with the next report.
    """

    def __init__(self, engine: dict[str, Any], epochs: int) -> None:
        self.rungs = {int(e) for e in engine.get("report_epochs", [])}
        self.every = float(engine.get("report_every_s", 0.0))
        self.last_epoch = epochs
        self.since = time.monotonic()

    def due(self, epoch: int) -> bool:
        """Whether ``epoch``, just finished, is reported."""
        late = time.monotonic() - self.since >= self.every
        return epoch >= self.last_epoch or epoch in self.rungs or late

    def reported(self) -> None:
        """A report went out now."""
        self.since = time.monotonic()


def _log_provenance(
    engine: dict[str, Any], params: dict[str, Any], trainer_cls: type, trainer: Any, logger: TrialLogger
) -> None:
    """Config, sweep spec, trainer source and environment: what it takes to rerun this trial (one upload)."""
    texts = {"config.yaml": yaml.safe_dump(params, sort_keys=False)}
    if engine.get("spec_text"):
        texts["spec.yaml"] = engine["spec_text"]
    name, source = trainer_source(trainer_cls)
    if source:
        texts[f"source/{name}"] = source
    texts["environment.json"] = environment_json(str(getattr(trainer, "device", "")))
    logger.log_texts(texts)


def _log_curves(curves: CurveHistory, logger: TrialLogger) -> None:
    """Draw and queue ``curves/curves.png`` when there are points it has not shown yet."""
    if not curves.series or curves.points == curves.drawn:
        return
    try:
        with tempfile.TemporaryDirectory() as folder:
            for path in curves.plot(Path(folder)):
                logger.log_artifact(path, "curves")
            curves.drawn = curves.points
    except Exception as exc:  # noqa: BLE001 - a plot must never hide how the trial ended
        logger.log_text(f"could not draw curves: {exc}", "curves/error.txt")


def _restore(trainer: Any, logger: TrialLogger, counts: dict[str, float], curves: CurveHistory) -> int:
    """Load Ray's checkpoint if the trial is being restored; return the epochs already done.

    The logger then resends what the previous process queued before the checkpoint but may not
    have delivered, and skips what that process logged after it (the epoch being rerun).
    """
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=False)
    trainer.load_state_dict(state["trainer"])
    counts.update(state.get("counts", {}))
    undelivered = state.get("undelivered", [])
    logger.resume(undelivered)
    _reload_curves(logger, curves, undelivered)
    return int(state["epoch"])


def _reload_curves(logger: TrialLogger, curves: CurveHistory, undelivered: list[tuple[str, float, int, int]]) -> None:
    """Give a restarted trial's curves the steps before the restart: the store's, then the resent ones."""
    for key in [k for k in logger.logged if curves.wants(k)]:
        for step, value in logger.history(key):
            curves.add(step, {key: value})
    for key, value, _, step in undelivered:
        if curves.wants(key):
            curves.add(step, {key: value})


def _log_images(trainer: Any, logger: TrialLogger, epoch: int) -> None:
    grid = getattr(trainer, "sample_grid", None)
    if grid is None:
        return
    from trainables.images import save_png

    with tempfile.TemporaryDirectory() as folder:
        path = save_png(grid(), Path(folder) / f"epoch_{epoch:03d}.png")
        logger.log_artifact(path, "images")
