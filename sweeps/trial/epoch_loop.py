"""The one epoch loop every trial runs: one-worker trials, each rank of a multi-worker trial, and ``sweeps train``.

Per epoch the trainer trains and validates: a class trainer's ``train_epoch`` and ``validate``
called from here, or a function trainer's own loop, which calls ``run.step`` and ``run.report``
(``sweeps.trial.function_run``); either way the end of an epoch is :meth:`EpochLoop.end_epoch`.
Every optimizer step goes through the trainer's
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

import dataclasses
import logging
import math
import pickle
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from sweeps.core.failures import message_line
from sweeps.core.keys import (
    COLLAPSED_AT_END_KEY,
    EPOCH,
    EPOCH_SECONDS_KEY,
    EPOCHS_FIELD,
    FIRST_EPOCH_SECONDS_KEY,
    GIT_COMMIT_TAG,
    HISTORY_KEY,
    OBSERVED_LATER_KEY,
    OBSERVED_REASON_KEY,
    OBSERVED_SIGNAL_KEY,
    OBSERVED_STEP_KEY,
    SKIPPED_KEY,
    STEPS_KEY,
    TAG_COLLAPSED_AT_END,
    TAG_WOULD_STOP_LATER,
    TAG_WOULD_STOP_REASON,
    TAG_WOULD_STOP_SIGNAL,
    TAG_WOULD_STOP_STEP,
    TIME_UP_KEY,
)
from sweeps.core.plan import TrialPlan
from sweeps.divergence import DEFAULTS, Divergence, DivergenceDetector, DivergenceSettings, may_recover
from sweeps.tracking.curves import CurveHistory
from sweeps.tracking.provenance import environment_commit, environment_json, source_folder, trainer_sources
from sweeps.tracking.trial_logger import TrialLogger
from sweeps.trial.function_run import FunctionRun
from sweeps.trial.stops import (
    CheckpointSaveError,
    DivergedError,
    MetricMissingError,
    ReturnedEarlyError,
    TrainerExitError,
    divergence_result,
    metrics_dict,
    non_finite_metrics,
)
from sweeps.trial.trainer_values import metric_floats, step_number
from trainables.config import build_config, field_types
from trainables.protocol import ObservesSteps, SamplesImages, StopTrial, is_function_trainer, trainer_device
from trainables.registry import load_trainer
from trainables.runtime import pick_device, restore_rng, rng_state, seed_rngs

__all__ = [
    "CHECKPOINT_FILE",
    "DELIVERY_TIMEOUT_S",
    "Channel",
    "CheckpointState",
    "DivergedError",
    "EpochLoop",
    "MetricMissingError",
    "ReportCadence",
    "detector_for",
    "divergence_result",
    "load_checkpoint",
    "reload_curves",
    "save_checkpoint",
    "StepWatch",
]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "trainer.pt"
DELIVERY_TIMEOUT_S = 900.0  # as long as TrialLogger waits at the end of a trial

Reduce = Callable[[dict[str, float]], dict[str, float]]
CheckpointState = dict[str, Any]
"""``{"trainer": state_dict, "epoch": n, "counts": {...}, "undelivered": [...], "watch": {...}}``, saved as
:data:`CHECKPOINT_FILE` (``watch``: the divergence detector's state, :meth:`StepWatch.state`)."""


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


def detector_for(plan: TrialPlan) -> DivergenceDetector:
    """The divergence detector the plan asks for (the detector's defaults where it sets nothing)."""
    raw = plan.divergence
    known = set(DivergenceSettings.__dataclass_fields__)
    return DivergenceDetector(DivergenceSettings(**{k: v for k, v in raw.items() if k in known}) if raw else None)


class OverflowCount:
    """Counts the steps that overflowed (were skipped by a loss scaler), GradScaler's start-up calibration left out.

    A network's first run of overflows, before its first good step, is GradScaler lowering its
    initial scale (65536) to one that fits, as the detector's ``loss_scale.calibration`` treats it:
    not an unstable step. A first run longer than ``CALIBRATION`` steps was no calibration, and
    counts whole (the detector stops such a trial there): a user's trial whose 30 steps all
    overflowed, its scale held at a floor, read "skipped 20% of its optimizer steps".
    """

    CALIBRATION = int(DEFAULTS["loss_scale"]["calibration"])

    def __init__(self) -> None:
        self.calibrating: dict[str, int] = {}
        """Networks with no good step yet, and the overflows each has had so far."""
        self.calibrated: set[str] = set()

    def overflowed(self, values: dict[str, float]) -> int:
        """How many steps this one makes count as overflowed (0 or 1; a whole first run past ``CALIBRATION``)."""
        counted = 0
        for key, value in values.items():
            if not key.endswith("skipped"):
                continue
            net = key[: -len("skipped")]
            if net in self.calibrated:
                counted = max(counted, int(bool(value)))
            elif not value:
                self.calibrating.pop(net, None)
                self.calibrated.add(net)
            else:
                run = self.calibrating[net] = self.calibrating.get(net, 0) + 1
                counted = max(counted, run if run == self.CALIBRATION + 1 else int(run > self.CALIBRATION))
        return counted


NO_LOSS_STEPS = 10
"""After this many steps with no ``loss`` among a trial's step diagnostics, its run gets a warning."""
NO_LOSS_WARNING = (
    f"no step sent a loss in the first {NO_LOSS_STEPS} steps: loss_explosion and the non-finite loss check watch "
    "nothing (send it: run.step(loss=...), or 'loss' among on_step's metrics)"
)


class StepWatch:
    """The per-step hook: record the step (where there is a logger), count it, watch it.

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
        self.collapsed = ""
        """Observe mode: why the output was still collapsed when the trial's training ended ('' if it was not)."""
        self.later = ""
        """Observe mode: ``signal@step: reason`` of a later signal no step undoes, after a first that may recover."""
        self.overflows = OverflowCount()
        self.losses = 0
        """Steps so far that sent a ``loss``."""
        self.last_step = -1
        self.steps_told = False
        self.twice_told = False

    def state(self) -> dict[str, Any]:
        """The detector's, the overflow count's and observe mode's state, for a checkpoint."""
        observed = None if self.observed is None else dataclasses.asdict(self.observed)
        return {
            "detector": self.detector.state(),
            "calibrated": sorted(self.overflows.calibrated),
            "observed": observed,
            "later": self.later,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Carry on from a checkpoint's :meth:`state` (a resumed trial counted its first overflow as calibration).

        Observe mode: the first would-be stop too; a resumed trial flagged before its checkpoint was
        flagged again later (its run's tags overwritten) or reported no would-be stop at all.
        """
        self.detector.load_state(state.get("detector") or {})
        self.overflows.calibrated.update(state.get("calibrated") or ())
        if observed := state.get("observed"):
            self.observed = Divergence(**observed)
        self.later = str(state.get("later") or "")

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        """Take one optimizer step's diagnostics; raise :class:`DivergedError` when a signal stops the trial."""
        step, values = step_number(step), metric_floats(metrics)
        if step < self.last_step and not self.steps_told:  # once a trial: its curves and MLflow's charts fold
            self.steps_told = True
            self._warn(
                f"on_step: step {step} after step {self.last_step}: step numbers should rise over the trial "
                "(count optimizer steps from the trial's start, not from each epoch's)"
            )
        elif step == self.last_step and not self.twice_told:  # the detector would count two steps
            self.twice_told = True
            self._warn(
                f"on_step: step {step} sent twice: send each optimizer step once, with all its values in one call "
                "(e.g. {'loss': g_loss, 'loss_d': d_loss})"
            )
        self.last_step = step
        values = self.reduce(values) if self.reduce is not None else values
        if self.logger is not None:
            self.logger.add_step(step, values)
            self.curves.add(step, values)
        self.counts[STEPS_KEY] += 1
        self.losses += "loss" in values
        if self.counts[STEPS_KEY] == NO_LOSS_STEPS and not self.losses:
            self._warn(NO_LOSS_WARNING)
        self.counts[SKIPPED_KEY] += float(self.overflows.overflowed(values))
        if self.observed is not None:  # a collapse is followed to the end, and a later signal no step undoes kept
            later = self.detector.observe(step, values)
            if later is not None and not self.later and not may_recover(later.signal, later.reason):
                self._flag_later(later)
            return
        found = self.detector.observe(step, values)
        if found is None:
            return
        if self.logger is not None:
            self.logger.record_held()  # every step that led to the stop is recorded
        if not self.observe_only:
            raise DivergedError(found)
        self._flag(found)

    def _flag(self, found: Divergence) -> None:
        """Observe mode: keep the would-be stop and tag it on the trial's run."""
        self.observed = found
        if self.logger is not None:
            tags = {TAG_WOULD_STOP_SIGNAL: found.signal, TAG_WOULD_STOP_STEP: str(found.step)}
            self.logger.set_tags({**tags, TAG_WOULD_STOP_REASON: found.reason})

    def _flag_later(self, found: Divergence) -> None:
        """Observe mode: after a first flag that may recover, a signal no later step undoes (kept once, tagged).

        A user's trial flagged for a run of overflows at step 7 then had its loss scale fall below
        its floor and its loss go NaN; it read "then better by 4%, completed".
        """
        if self.observed is not None and not may_recover(self.observed.signal, self.observed.reason):
            return  # the first flag already says so
        self.later = f"{found.signal}@{found.step}: {found.reason}"
        if self.logger is not None:
            self.logger.set_tags({TAG_WOULD_STOP_LATER: self.later})

    def ended_collapsed(self, found: Divergence) -> None:
        """Observe mode, at the trial's end: its output was still collapsed (the would-be stop, if none came before)."""
        if self.observed is None:  # a trial shorter than the window: the stop mode would have ended it diverged
            self._flag(found)
        self.collapsed = found.reason
        if self.logger is not None:
            self.logger.set_tags({TAG_COLLAPSED_AT_END: found.reason})

    def _warn(self, message: str) -> None:
        """A warning on the trial's run (and in its log); on stderr under ``sweeps train``, which has no run."""
        if self.logger is not None:
            self.logger.warn(message)
        elif self.reduce is None:  # a multi-worker trial's other ranks: rank 0 warns on the run
            print(f"warning: {message}", file=sys.stderr)

    def collapsed_to_the_end(self, last_epoch_steps: int) -> Divergence | None:
        """At the trial's end: a collapse that lasted to the end of its training (``DivergenceDetector``)."""
        return self.detector.collapsed_to_the_end(last_epoch_steps)

    def result(self) -> dict[str, Any]:
        """The report keys of the stop observed so far (none before one)."""
        if self.observed is None:
            return {}
        found = self.observed
        keys = {OBSERVED_SIGNAL_KEY: found.signal, OBSERVED_STEP_KEY: found.step, OBSERVED_REASON_KEY: found.reason}
        if self.later:
            keys[OBSERVED_LATER_KEY] = self.later
        return {**keys, COLLAPSED_AT_END_KEY: self.collapsed} if self.collapsed else keys


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


def _exit_hint(exc: SystemExit) -> str:
    """What an exit most likely was: argparse refusing the trial process's own command line exits 2."""
    frames = traceback.extract_tb(exc.__traceback__)
    if exc.code == 2 and any(frame.filename.endswith("argparse.py") for frame in frames):
        return (
            " in argparse: parse_args() read the trial process's own command line (Ray's worker "
            "arguments); call parse_args([]) or take the values from config"
        )
    return ""


class EpochLoop:
    """Builds the plan's trainer and runs its epochs, recording to ``logger`` when there is one."""

    def __init__(
        self, plan: TrialPlan, params: dict[str, Any], logger: TrialLogger | None = None, reduce: Reduce | None = None
    ) -> None:
        self.plan, self.params, self.logger, self.reduce = plan, params, logger, reduce
        self.curves = CurveHistory()
        self.counts = {STEPS_KEY: 0.0, SKIPPED_KEY: 0.0}
        self.trainer: Any = None
        """The class trainer, or a function trainer's :class:`FunctionRun`."""
        self.epochs_done = 0
        """Epochs trained and validated so far (a restored trial's count includes the checkpoint's)."""
        self.metrics: dict[str, float] = {}
        """The last epoch's metrics."""
        self.channel: Channel | None = None
        self.cadence = ReportCadence(plan)
        self.history: list[tuple[int, float]] = []  # (epoch, metric) since the last report
        self.unreported = False  # an epoch ended since the last report
        self.steps_before_epoch = 0
        self.last_epoch_steps = 0
        """Steps the last recorded epoch trained (a collapse at the trial's end need not outlast more)."""
        self.trainer_state: Callable[[], Any] | None = None
        self.watch: StepWatch | None = None
        self.ended_by_driver = False
        """A report raised ``SystemExit``: Ray Tune ends a stopped trial's training thread with ``sys.exit(0)``."""
        self.started = time.monotonic()
        """When this trial process began the trial (``budget.trial_time`` counts from it)."""
        self.epoch_ends: list[float] = []
        """``time.monotonic()`` when this process's first epoch began, then at the end of each epoch it ran."""
        self.image_range_told = False
        self.image_failures = 0
        """An epoch's image had values outside [0, 1], and the run's warning says so (once)."""

    def run(self, channel: Channel) -> dict[str, float]:
        """Train from the channel's checkpoint (or from scratch) until the last epoch or a stop; the last metrics."""
        self.channel = channel
        trainer = load_trainer(self.plan.trainer)
        # after the import: a module that sets its own threads at import time (the first trial of a
        # process imports it, the next ones do not) no longer gives trials of one sweep different counts
        torch.set_num_threads(max(1, int(self.plan.threads)))
        try:
            if is_function_trainer(trainer):
                return self._run_function(trainer)
            return self._run_class(trainer)
        except SystemExit as exc:
            if self.ended_by_driver:  # Tune ending the thread of a trial it stopped, from inside its report
                raise
            raise TrainerExitError(f"the trainer called sys.exit({exc.code!r}){_exit_hint(exc)}") from exc
        except KeyboardInterrupt as exc:
            raise TrainerExitError("the trainer raised KeyboardInterrupt") from exc

    def _run_class(self, trainer_cls: Any) -> dict[str, float]:
        """A class trainer: ``train_epoch`` and ``validate`` per epoch, called from here."""
        params = self.params
        if EPOCHS_FIELD in field_types(trainer_cls.Config):  # the epochs this run trains (sweeps train --epochs)
            params = {**params, EPOCHS_FIELD: self.plan.epochs}
        trainer = self.trainer = trainer_cls(build_config(trainer_cls.Config, params))
        if isinstance(trainer, ObservesSteps):
            trainer.on_step = self.step_hook()
        self.trainer_state = trainer.state_dict
        saved = self._begin(trainer_cls, trainer_device(trainer))
        if saved is not None:
            trainer.load_state_dict(saved["trainer"])
            self._take_counts(saved)
        image = trainer.sample_grid if isinstance(trainer, SamplesImages) else None
        self.epoch_ends = [time.monotonic()]
        for epoch in range(self.epochs_done + 1, self.plan.epochs + 1):
            try:
                trained = metric_floats(metrics_dict(trainer.train_epoch(), "train_epoch"), "train_epoch()")
                validated = metric_floats(metrics_dict(trainer.validate(), "validate"), "validate()")
                metrics = {**(self.reduce(trained) if self.reduce else trained), **validated}
                # as a function's run.report: never ranked by an older epoch's value (training means, such
                # as an fp16 epoch's mean gradient norm over skipped steps, may be NaN in a healthy trial)
                diverged = non_finite_metrics(validated, epoch, int(self.counts[STEPS_KEY]))
                if diverged is not None:
                    diverged.metrics = metrics
                    raise diverged
            except DivergedError as diverged:
                self.end_diverged(epoch, diverged.divergence, diverged.metrics)
                return self.metrics
            if not self.end_epoch(epoch, metrics, image):
                break
        return self.metrics

    def _run_function(self, train: Callable[..., Any]) -> dict[str, float]:
        """A function trainer: ``train(config, run)`` runs its own loop; ``run.report`` ends each epoch here."""
        saved = self._begin(train, str(pick_device(str(self.params.get("device", "auto")))))

        def restored() -> None:  # the function called run.restore() (else it starts over)
            assert saved is not None
            self._take_counts(saved)

        mlflow_run = (self.plan.tracking_uri, self.plan.run_id) if self.plan.run_id else None
        run = FunctionRun(
            self.params,
            self.plan.epochs,
            self.step_hook(),
            self.end_function_epoch,
            saved,
            restored,
            self.reduce,
            name=self.plan.label or "train",
            mlflow_run=mlflow_run,
        )
        self.trainer, self.trainer_state = run, run.checkpoint_state
        stopped = False
        # the global RNGs start from the trial's seed: a loop seeded at import time (once a process,
        # which runs trial after trial) or not at all trains the same config the same way every time
        seed = run.config.get("seed", 0)
        if isinstance(seed, (int, float)) and not isinstance(seed, bool):
            seed_rngs(int(seed))
        self.epoch_ends = [time.monotonic()]
        try:
            train(run.config, run)
        except DivergedError as diverged:
            self.end_diverged(diverged.epoch or self.epochs_done + 1, diverged.divergence, diverged.metrics)
            return self.metrics
        except StopTrial:
            stopped = True  # the sweep stopped it at a report (or the function did): what it reported is recorded
        if run.reports == 0:
            raise MetricMissingError(
                f"trainer {self.plan.trainer!r} returned without calling run.report: "
                f"metric {self.plan.metric!r} was never reported"
            )
        if (collapse := self._stopped_collapsed(self.epochs_done)) is not None:
            self.end_diverged(self.epochs_done, collapse)
            return self.metrics
        if self.unreported:  # the function ended between reports: its last epochs still go out
            self._report(self.epochs_done)
        if not stopped and self.epochs_done < self.plan.epochs:
            raise ReturnedEarlyError(
                f"trainer {self.plan.trainer!r} returned after epoch {self.epochs_done} of {self.plan.epochs}: "
                "its loop must run run.epochs epochs (for epoch in range(run.epochs): ... run.report(epoch + 1, ...))"
            )
        return self.metrics

    def step_hook(self) -> StepWatch:
        """The hook every optimizer step goes through (a class trainer's ``on_step``, a function's ``run.step``)."""
        self.watch = StepWatch(detector_for(self.plan), self.counts, self.logger, self.curves, self.reduce)
        return self.watch

    def end_epoch(self, epoch: int, metrics: dict[str, float], image: Callable[[], Any] | None = None) -> bool:
        """The end of an epoch, whoever trained it: its metrics and image recorded, a report at the cadence.

        True if the trial goes on.
        """
        assert self.channel is not None
        self._record_epoch(epoch, metrics, image)
        if (collapse := self._stopped_collapsed(epoch)) is not None:
            self.end_diverged(epoch, collapse)
            return False
        if self.plan.deadline and epoch < self.plan.epochs and self.channel.agree(time.time() >= self.plan.deadline):
            self._report(epoch)  # the sweep's budget.time ran out: this epoch is the trial's last
            return False
        if epoch < self.plan.epochs and self.channel.agree(self._out_of_time()):
            self._report(
                epoch, {TIME_UP_KEY: self.plan.trial_time_s}
            )  # budget.trial_time ran out: this epoch is the trial's last
            return False
        if not self.channel.agree(self.cadence.due(epoch)):
            self.unreported = True
            return True
        return self._report(epoch)

    def end_function_epoch(self, epoch: int, metrics: dict[str, float], image: Callable[[], Any] | None = None) -> bool:
        """A function trainer's ``run.report``: :meth:`end_epoch`, except at its last epoch.

        There the epoch is recorded but reported only once the function returns: Tune may end the
        trial's thread at that report (ASHA stops every trial that reaches its last epoch), and the
        code after the function's loop (a test, a save, closing its files) would never run.
        """
        if epoch < self.plan.epochs:
            return self.end_epoch(epoch, metrics, image)
        self._record_epoch(epoch, metrics, image)
        self.unreported = True
        return True

    def _record_epoch(self, epoch: int, metrics: dict[str, float], image: Callable[[], Any] | None) -> None:
        """The epoch's metrics (the sweep's among them) and image recorded, and kept for its report."""
        self._check_metric(metrics)
        self.epochs_done, self.metrics = epoch, metrics
        self.epoch_ends.append(time.monotonic())
        steps = int(self.counts[STEPS_KEY])
        self.last_epoch_steps, self.steps_before_epoch = steps - self.steps_before_epoch, steps
        if self.logger is not None:
            # with the step counts so far: a trial whose last report never reaches the driver (the
            # sweep's time ran out, its driver died) is still counted from its run
            self.logger.log_metrics({**metrics, **self.counts}, step=epoch)
            self._log_image(image, epoch)
        if self.plan.metric in metrics:
            self.history.append((epoch, float(metrics[self.plan.metric])))

    def progress(self) -> dict[str, Any]:
        """Where the trial is: epochs done, step counts, and the epochs' metric since the last report.

        What a failure's last report carries, so the epochs it validated are not lost with it.
        """
        return {EPOCH: self.epochs_done, **self.counts, HISTORY_KEY: list(self.history)}

    def end_diverged(self, epoch: int, divergence: Divergence, metrics: dict[str, float] | None = None) -> None:
        """A diverged trial's last report: everything it recorded delivered first, then why it stopped.

        ``metrics``: the epoch's validation when it is what diverged (a NaN metric), recorded as it came.
        """
        assert self.channel is not None
        if self.logger is not None:
            self.logger.record_held()  # the steps that led to the stop, held back by the step cadence
            self.logger.log_metrics({**(metrics or {}), **self.counts}, step=epoch)  # the step counts at the stop
        self._deliver()
        observed = self.watch.result() if self.watch is not None else {}  # observe mode: what a step signal saw first
        result = {
            self.plan.metric: math.nan,
            EPOCH: epoch,
            **self.counts,
            **self._epoch_seconds(),
            **observed,
            **divergence_result(divergence),
        }
        self._to_channel({**result, HISTORY_KEY: self.history}, None)

    def _collapsed_at_end(self, epoch: int) -> Divergence | None:
        """At the trial's last epoch: a collapse that lasted to the end of its training, else None."""
        if self.watch is None or epoch < self.plan.epochs:
            return None
        return self.watch.collapsed_to_the_end(self.last_epoch_steps)

    def _stopped_collapsed(self, epoch: int) -> Divergence | None:
        """The last epoch's collapse when it ends the trial as diverged (the detector stops trials, not observe mode).

        A trial shorter than ``collapse.steps`` whose output was stuck through its last epoch (and
        longer than it had learned) never met the window; it ends as the detector would have stopped
        it, not ``completed`` and ranked.
        """
        found = self._collapsed_at_end(epoch)
        return found if found is not None and self.watch is not None and not self.watch.observe_only else None

    def _out_of_time(self) -> bool:
        """Whether ``budget.trial_time`` has run out since this trial began."""
        limit = self.plan.trial_time_s
        return bool(limit) and time.monotonic() - self.started >= limit

    def _report(self, epoch: int, extra: dict[str, float] | None = None) -> bool:
        assert self.channel is not None
        # Tune may stop the trial at this report (ASHA, at a rung or at the last epoch) and end
        # this process without waiting: deliver what the epochs recorded first, curves too.
        if self.watch is not None and (collapse := self._collapsed_at_end(epoch)) is not None:
            self.watch.ended_collapsed(collapse)  # observe mode: the trial ran on, its output still stuck
        observed = self.watch.result() if self.watch is not None else {}
        self._deliver()
        result = {
            **self.metrics,
            EPOCH: epoch,
            **self.counts,
            **self._epoch_seconds(),
            **observed,
            **(extra or {}),
            HISTORY_KEY: self.history,
        }
        go_on = self._to_channel(result, partial(self._state, epoch))
        self.history, self.unreported = [], False
        self.cadence.reported()
        return go_on

    def _epoch_seconds(self) -> dict[str, float]:
        """The median seconds of the epochs this process ran, and how long its first took to end ({} before it ended).

        ``EPOCH_SECONDS_KEY``: the first epoch counts from its start, after the trainer was built (a
        function trainer's own set-up falls into it, which the median of several epochs leaves out).
        ``FIRST_EPOCH_SECONDS_KEY``: from when this process began the trial, the trainer's build
        included: the least a trial started now needs before it has a result (``budget.time``).
        """
        ends = self.epoch_ends
        if len(ends) < 2:
            return {}
        return {
            EPOCH_SECONDS_KEY: statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False)),
            FIRST_EPOCH_SECONDS_KEY: ends[1] - self.started,
        }

    def _to_channel(self, result: dict[str, Any], state: Callable[[], CheckpointState] | None) -> bool:
        """``channel.report``, noting a ``SystemExit`` raised in it: Ray Tune ends a stopped trial's thread so."""
        assert self.channel is not None
        try:
            return self.channel.report(result, state)
        except SystemExit:
            self.ended_by_driver = True
            raise

    def _deliver(self) -> None:
        """Queue the curves; wait until everything recorded reached MLflow (a report may end the process)."""
        if self.logger is not None:
            self.log_curves()
            self.logger.flush(timeout=DELIVERY_TIMEOUT_S)

    def log_curves(self) -> None:
        """Draw and queue ``curves/curves.png`` when there are points it has not shown yet.

        Drawn into the logger's own spool folder (no temporary folder that interpreter shutdown
        could remove under it). A plot that cannot be drawn never hides how the trial ended: it is
        a warning in the trial's log and on its run (tag ``sweep.warning``).
        """
        if self.logger is None or not self.curves.series or self.curves.points == self.curves.drawn:
            return
        try:
            for path in self.curves.plot(self.logger.spool_folder()):
                self.logger.log_spooled(path, "curves")
            self.curves.drawn = self.curves.points
        except Exception as exc:  # noqa: BLE001 - a plot must never hide how the trial ended
            self.logger.warn(f"could not draw curves: {type(exc).__name__}: {exc}")

    def _check_metric(self, metrics: dict[str, float]) -> None:
        metric = self.plan.metric
        if metric and metric not in metrics:
            raise MetricMissingError(
                f"metric {metric!r} not produced by trainer {self.plan.trainer!r} "
                f"(it reports: {', '.join(sorted(metrics)) or 'nothing'})"
            )

    def _state(self, epoch: int) -> CheckpointState:
        # the undelivered metrics are resent after a restart if they never arrived
        undelivered = self.logger.undelivered() if self.logger is not None else []
        trainer = self.trainer_state() if self.trainer_state is not None else None
        watched = self.watch.state() if self.watch is not None else {}
        return {
            "trainer": trainer,
            "epoch": epoch,
            "counts": dict(self.counts),
            "undelivered": undelivered,
            "watch": watched,
        }

    def _begin(self, source: Any, device: str) -> CheckpointState | None:
        """The channel's checkpoint (None: a fresh start); the logger resumed from it; provenance on a fresh run.

        The logger resends what the previous process queued before the checkpoint but may not have
        delivered, and skips what that process logged after it (the epoch being rerun, or every
        step it logged when it died before its first checkpoint).
        """
        assert self.channel is not None
        saved = self.channel.restore()
        logger = self.logger
        if logger is not None:
            # a restart without a checkpoint (its process died before its first) starts over: what the
            # store has from the dead process is not logged again either
            undelivered = saved.get("undelivered", []) if saved is not None else []
            logger.resume(undelivered)
            if saved is not None:
                reload_curves(logger, self.curves, undelivered)
        if logger is not None and (saved is None or not logger.has_artifact("config.yaml")):
            self._log_provenance(source, device)
        self.cadence = ReportCadence(self.plan)
        return saved

    def _take_counts(self, saved: CheckpointState) -> None:
        """A checkpoint's epochs and step counts, once its trainer state is loaded."""
        self.counts.update(saved.get("counts", {}))
        if self.watch is not None:  # the detector judges by the trial's own start, not the resume's
            self.watch.load_state(saved.get("watch") or {})
        self.epochs_done = int(saved["epoch"])
        self.steps_before_epoch = int(self.counts[STEPS_KEY])  # a restored trial's next epoch starts there

    def _log_provenance(self, source: Any, device: str) -> None:
        """Config, sweep spec, trainer source and environment: what it takes to rerun this trial (one upload)."""
        assert self.logger is not None
        texts = {"config.yaml": yaml.safe_dump(self.params, sort_keys=False)}
        if self.plan.spec_text:
            texts["spec.yaml"] = self.plan.spec_text
        texts.update({f"source/{name}": text for name, text in trainer_sources(source).items()})
        folder = source_folder(source)
        texts["environment.json"] = environment_json(device, folder)
        self.logger.log_texts(texts)
        if commit := environment_commit(device, folder):  # where MLflow's UI shows a commit
            self.logger.set_tags({GIT_COMMIT_TAG: commit})

    def _log_image(self, image: Callable[[], Any] | None, epoch: int) -> None:
        """The epoch's image (``sample_grid()``, ``run.image``), any shape :func:`as_image` takes.

        An image that cannot be made never fails the trial: a warning on its run and in its log.
        """
        if self.logger is None or image is None:
            return
        from trainables.images import as_image, save_png

        try:
            raw = _apart_from_training(image)
            values = raw.detach() if torch.is_tensor(raw) else torch.as_tensor(raw)
            low, high = float(values.min()), float(values.max())  # before a batch's tiling clamps it
            path = save_png(as_image(raw), self.logger.spool_folder() / f"epoch_{epoch:03d}.png")
        except Exception as exc:  # noqa: BLE001 - a picture must never end the trial
            failure = f"could not save the epoch {epoch} image: {type(exc).__name__}: {message_line(str(exc))}"
            if self.image_failures == 0:  # its run's tag names the first; each is in the trial's log
                self.logger.warn(f"{failure} (later epochs' images are tried again; each failure is in the log)")
            else:
                log.warning("trial run %s: %s", self.logger.run_id, failure)
            self.image_failures += 1
            return
        self.logger.log_spooled(path, "images")
        if not self.image_range_told and (low < -IMAGE_SLACK or high > 1 + IMAGE_SLACK):  # once a trial
            self.image_range_told = True
            self.logger.warn(
                f"the epoch {epoch} image has values in [{low:.2f}, {high:.2f}], outside [0, 1]: saved clamped "
                "(a tanh output in [-1, 1]: pass (x + 1) / 2)"
            )


def _apart_from_training(image: Callable[[], Any]) -> Any:
    """``image()`` with every RNG put back after it: what it draws (a VAE's random latents) leaves training alone.

    ``sweeps train`` draws no image, so a ``sample_grid`` that drew from the global generators made
    the sweep's later epochs differ from the same config trained from its export (0.8-8.9% apart).
    """
    state = rng_state()
    try:
        return image()
    finally:
        restore_rng(state)


IMAGE_SLACK = 0.01
"""How far outside [0, 1] an image's values may stray (rounding) before its run gets a warning."""


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
    try:
        torch.save(state, path)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:  # what pickle raises for what it cannot save
        raise CheckpointSaveError(
            f"the trainer's state_dict() cannot be saved in a checkpoint ({type(exc).__name__}: {exc}); "
            "keep lambdas, locks, open files and generators out of it"
        ) from exc
    return path


def load_checkpoint(folder: str | Path) -> CheckpointState:
    """Read the state :func:`save_checkpoint` wrote into ``folder``."""
    state: CheckpointState = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=False)
    return state
