"""The one epoch loop every trial runs: one-worker trials, each rank of a multi-worker trial, and ``sweeps train``.

Per epoch the trainer trains and validates. Every optimizer step goes through the trainer's
``on_step`` hook into the divergence detector and, where the loop has a logger, into a buffer of
step metrics; each epoch's metrics join it. The buffer goes to the trial's MLflow run when a step
or an epoch ends a second or more after the last send, and always before a report (so a trial
ASHA stops has lost nothing). At the epochs the cadence picks (ASHA's rungs, the last epoch, every
``report_every_s``) the loop reports through its :class:`Channel`, with a checkpoint of the
trainer, the epoch, the step counts and the metrics not yet confirmed stored. A diverged trial
stops within the step that fired the signal and ends with a last report that says why; its last
checkpoint, from before the onset, is kept.

Where the loop runs on several ranks, ``reduce`` averages each step's diagnostics and each
epoch's training means over the ranks (so every rank's detector fires at the same step), and the
channel makes every rank follow rank 0's decisions; only rank 0 has a logger.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from sweeps.core.keys import (
    DIVERGED_KEY,
    EPOCH,
    HISTORY_KEY,
    OBSERVED_REASON_KEY,
    OBSERVED_SIGNAL_KEY,
    OBSERVED_STEP_KEY,
    ONSET_KEY,
    REASON_KEY,
    SIGNAL_KEY,
    SKIPPED_KEY,
    STEP_KEY,
    STEPS_KEY,
    TAG_WOULD_STOP_REASON,
    TAG_WOULD_STOP_SIGNAL,
    TAG_WOULD_STOP_STEP,
)
from sweeps.core.plan import TrialPlan
from sweeps.divergence import Divergence, DivergenceDetector, DivergenceSettings
from sweeps.tracking.curves import CurveHistory
from sweeps.tracking.provenance import environment_json, trainer_source
from sweeps.tracking.trial_logger import TrialLogger
from trainables.config import build_config
from trainables.protocol import ObservesSteps, SamplesImages, trainer_device
from trainables.registry import load_trainer

CHECKPOINT_FILE = "trainer.pt"
DELIVERY_TIMEOUT_S = 900.0  # as long as TrialLogger waits at the end of a trial

Reduce = Callable[[dict[str, float]], dict[str, float]]
CheckpointState = dict[str, Any]
"""``{"trainer": state_dict, "epoch": n, "counts": {...}, "undelivered": [...]}``, saved as :data:`CHECKPOINT_FILE`."""


class MetricMissingError(RuntimeError):
    """The trainer's results lack the metric the sweep optimizes."""


class DivergedError(Exception):
    """Raised from the step hook to leave the trainer's loop at once."""

    def __init__(self, divergence: Divergence) -> None:
        super().__init__(divergence.reason)
        self.divergence = divergence


class Channel(Protocol):
    """How the loop talks to whoever drives it: Ray Tune, Ray Train's ranks, or the terminal."""

    def restore(self) -> CheckpointState | None:
        """The checkpoint to continue from, or None for a fresh start."""
        ...

    def agree(self, decision: bool) -> bool:
        """The decision every rank takes (rank 0's); unchanged with one worker."""
        ...

    def report(self, result: dict[str, Any], state: Callable[[], CheckpointState] | None) -> bool:
        """Report ``result``, with a checkpoint of ``state()`` when given; True if the trial goes on."""
        ...


def divergence_result(divergence: Divergence) -> dict[str, Any]:
    """The engine's keys in a diverged trial's last report."""
    return {
        DIVERGED_KEY: 1.0,
        SIGNAL_KEY: divergence.signal,
        REASON_KEY: divergence.reason,
        STEP_KEY: divergence.step,
        ONSET_KEY: divergence.onset,
    }


def detector_for(plan: TrialPlan) -> DivergenceDetector:
    """The divergence detector the plan asks for (the detector's defaults where it sets nothing)."""
    raw = plan.divergence
    known = set(DivergenceSettings.__dataclass_fields__)
    return DivergenceDetector(DivergenceSettings(**{k: v for k, v in raw.items() if k in known}) if raw else None)


class StepWatch:
    """The trainer's per-step hook: record the step (where there is a logger), count it, watch it.

    ``reduce`` turns one rank's values into the values every rank agrees on (multi-worker
    trials average them over ranks), so every rank's detector fires at the same step. In
    ``observe`` mode the first signal is kept in :attr:`observed` (and tagged on the trial's run)
    instead of stopping the trial; later signals are ignored.
    """

    def __init__(
        self,
        detector: DivergenceDetector,
        counts: dict[str, float],
        logger: TrialLogger | None,
        curves: CurveHistory,
        reduce: Reduce | None = None,
    ) -> None:
        self.detector, self.counts, self.logger, self.curves, self.reduce = detector, counts, logger, curves, reduce
        self.observe_only = detector.settings.mode == "observe"
        self.observed: Divergence | None = None

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        """Take one optimizer step's diagnostics; raise :class:`DivergedError` when a signal stops the trial."""
        values = self.reduce(metrics) if self.reduce is not None else metrics
        if self.logger is not None:
            self.logger.add_step(step, values)
            self.curves.add(step, values)
        self.counts[STEPS_KEY] += 1
        self.counts[SKIPPED_KEY] += float(any(v for k, v in values.items() if k.endswith("skipped")))
        if self.observed is not None:
            return
        found = self.detector.observe(step, values)
        if found is None:
            return
        if not self.observe_only:
            raise DivergedError(found)
        self.observed = found
        if self.logger is not None:
            tags = {TAG_WOULD_STOP_SIGNAL: found.signal, TAG_WOULD_STOP_STEP: str(found.step)}
            self.logger.set_tags({**tags, TAG_WOULD_STOP_REASON: found.reason})

    def result(self) -> dict[str, Any]:
        """The report keys of the stop observed so far (none before one)."""
        if self.observed is None:
            return {}
        found = self.observed
        return {OBSERVED_SIGNAL_KEY: found.signal, OBSERVED_STEP_KEY: found.step, OBSERVED_REASON_KEY: found.reason}


class ReportCadence:
    """When a trial reports (and checkpoints): at ASHA's rungs, its last epoch, and every N seconds.

    Between those, epochs run without a round trip to the driver; their metrics still go to
    MLflow about every second (see ``TrialLogger``) and to Optuna with the next report.
    """

    def __init__(self, plan: TrialPlan) -> None:
        self.rungs = {int(e) for e in plan.report_epochs}
        self.every = float(plan.report_every_s)
        self.last_epoch = int(plan.epochs)
        self.since = time.monotonic()

    def due(self, epoch: int) -> bool:
        """Whether ``epoch``, just finished, is reported."""
        late = time.monotonic() - self.since >= self.every
        return epoch >= self.last_epoch or epoch in self.rungs or late

    def reported(self) -> None:
        """A report went out now."""
        self.since = time.monotonic()


class EpochLoop:
    """Builds the plan's trainer and runs its epochs, recording to ``logger`` when there is one."""

    def __init__(
        self, plan: TrialPlan, params: dict[str, Any], logger: TrialLogger | None = None, reduce: Reduce | None = None
    ) -> None:
        self.plan, self.params, self.logger, self.reduce = plan, params, logger, reduce
        self.curves = CurveHistory()
        self.counts = {STEPS_KEY: 0.0, SKIPPED_KEY: 0.0}
        self.trainer: Any = None
        self.watch: StepWatch | None = None
        self.epochs_done = 0
        """Epochs trained and validated so far (a restored trial's count includes the checkpoint's)."""

    def run(self, channel: Channel) -> dict[str, float]:
        """Train from the channel's checkpoint (or from scratch) until the last epoch or a stop; the last metrics."""
        plan, logger = self.plan, self.logger
        torch.set_num_threads(max(1, int(plan.threads)))
        trainer_cls = load_trainer(plan.trainer)
        trainer = self.trainer = trainer_cls(build_config(trainer_cls.Config, self.params))
        if isinstance(trainer, ObservesSteps):
            self.watch = trainer.on_step = StepWatch(detector_for(plan), self.counts, logger, self.curves, self.reduce)
        done = self.epochs_done = self._restore(trainer, channel.restore())
        if logger is not None and (done == 0 or not logger.has_artifact("config.yaml")):
            self._log_provenance(trainer_cls, trainer)
        cadence = ReportCadence(plan)
        history: list[tuple[int, float]] = []  # (epoch, metric) since the last report
        metrics: dict[str, float] = {}
        for epoch in range(done + 1, plan.epochs + 1):
            try:
                trained = trainer.train_epoch()
                metrics = {**(self.reduce(trained) if self.reduce else trained), **trainer.validate()}
            except DivergedError as diverged:
                if logger is not None:
                    logger.flush()
                result = {plan.metric: math.nan, EPOCH: epoch, **self.counts, **divergence_result(diverged.divergence)}
                channel.report({**result, HISTORY_KEY: history}, None)
                return metrics
            self._check_metric(metrics)
            self.epochs_done = epoch
            if logger is not None:
                logger.log_metrics(metrics, step=epoch)
                self._log_images(trainer, epoch)
            if plan.metric in metrics:
                history.append((epoch, float(metrics[plan.metric])))
            if not channel.agree(cadence.due(epoch)):
                continue
            if logger is not None:
                # Tune may stop the trial at this report (ASHA, at a rung or at the last epoch) and end
                # this process without waiting: deliver what the epochs recorded first, curves too.
                self.log_curves()
                logger.flush(timeout=DELIVERY_TIMEOUT_S)
            observed = self.watch.result() if self.watch is not None else {}
            go_on = channel.report(
                {**metrics, EPOCH: epoch, **self.counts, **observed, HISTORY_KEY: history},
                partial(self._state, trainer, epoch),
            )
            history = []
            cadence.reported()
            if not go_on:
                break
        return metrics

    def log_curves(self) -> None:
        """Draw and queue ``curves/curves.png`` when there are points it has not shown yet."""
        if self.logger is None or not self.curves.series or self.curves.points == self.curves.drawn:
            return
        try:
            with tempfile.TemporaryDirectory() as folder:
                for path in self.curves.plot(Path(folder)):
                    self.logger.log_artifact(path, "curves")
                self.curves.drawn = self.curves.points
        except Exception as exc:  # noqa: BLE001 - a plot must never hide how the trial ended
            self.logger.log_text(f"could not draw curves: {exc}", "curves/error.txt")

    def _check_metric(self, metrics: dict[str, float]) -> None:
        metric = self.plan.metric
        if metric and metric not in metrics:
            raise MetricMissingError(
                f"metric {metric!r} not produced by trainer {self.plan.trainer!r} "
                f"(it reports: {', '.join(sorted(metrics))})"
            )

    def _state(self, trainer: Any, epoch: int) -> CheckpointState:
        # the undelivered metrics are resent after a restart if they never arrived
        undelivered = self.logger.undelivered() if self.logger is not None else []
        counts = dict(self.counts)
        return {"trainer": trainer.state_dict(), "epoch": epoch, "counts": counts, "undelivered": undelivered}

    def _restore(self, trainer: Any, state: CheckpointState | None) -> int:
        """Load a checkpoint's state into the trainer and the counts; return the epochs already done.

        The logger then resends what the previous process queued before the checkpoint but may not
        have delivered, and skips what that process logged after it (the epoch being rerun).
        """
        if state is None:
            return 0
        trainer.load_state_dict(state["trainer"])
        self.counts.update(state.get("counts", {}))
        if self.logger is not None:
            undelivered = state.get("undelivered", [])
            self.logger.resume(undelivered)
            reload_curves(self.logger, self.curves, undelivered)
        return int(state["epoch"])

    def _log_provenance(self, trainer_cls: type, trainer: Any) -> None:
        """Config, sweep spec, trainer source and environment: what it takes to rerun this trial (one upload)."""
        assert self.logger is not None
        texts = {"config.yaml": yaml.safe_dump(self.params, sort_keys=False)}
        if self.plan.spec_text:
            texts["spec.yaml"] = self.plan.spec_text
        name, source = trainer_source(trainer_cls)
        if source:
            texts[f"source/{name}"] = source
        texts["environment.json"] = environment_json(trainer_device(trainer))
        self.logger.log_texts(texts)

    def _log_images(self, trainer: Any, epoch: int) -> None:
        if self.logger is None or not isinstance(trainer, SamplesImages):
            return
        from trainables.images import save_png

        with tempfile.TemporaryDirectory() as folder:
            path = save_png(trainer.sample_grid(), Path(folder) / f"epoch_{epoch:03d}.png")
            self.logger.log_artifact(path, "images")


def reload_curves(logger: TrialLogger, curves: CurveHistory, undelivered: list[tuple[str, float, int, int]]) -> None:
    """Give a restarted trial's curves the steps before the restart: the store's, then the resent ones."""
    for key in [k for k in logger.logged if curves.wants(k)]:
        for step, value in logger.history(key):
            curves.add(step, {key: value})
    for key, value, _, step in undelivered:
        if curves.wants(key):
            curves.add(step, {key: value})


def save_checkpoint(state: CheckpointState, folder: str | Path) -> Path:
    """Write a checkpoint's state into ``folder``; return the file."""
    path = Path(folder) / CHECKPOINT_FILE
    torch.save(state, path)
    return path


def load_checkpoint(folder: str | Path) -> CheckpointState:
    """Read the state :func:`save_checkpoint` wrote into ``folder``."""
    state: CheckpointState = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=False)
    return state
