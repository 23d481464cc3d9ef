"""How a trial's training is left early: divergence (the detector fired), a missing metric, a wrong ``run.report``.

Shared by the epoch loop and a function trainer's ``run``, which both raise and catch them.
"""

from __future__ import annotations

import math
from typing import Any

from sweeps.core.keys import DIVERGED_KEY, ONSET_KEY, REASON_KEY, SIGNAL_KEY, STEP_KEY
from sweeps.divergence import Divergence
from trainables.protocol import StopTrial


class MetricMissingError(RuntimeError):
    """The trainer's results lack the metric the sweep optimizes."""


class MetricsTypeError(TypeError):
    """A class trainer's ``train_epoch`` or ``validate`` returned something other than a dict of metrics.

    Its code does so for every config, so the sweep stops at the first such trial
    (``sweeps.core.failures.SWEEP_ENDING_ERRORS``).
    """


def metrics_dict(value: Any, method: str) -> dict[str, Any]:
    """``value`` (what ``method`` returned) when it is a dict of metrics, else :class:`MetricsTypeError` saying so."""
    if isinstance(value, dict):
        return value
    shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
    raise MetricsTypeError(
        f"{method}() must return a dict of metrics, such as {{'val_loss': 0.12}}; it returned "
        f"{type(value).__name__} {shown}"
    )


class CheckpointSaveError(RuntimeError):
    """The trainer's ``state_dict()`` cannot be pickled into a checkpoint (it holds a lambda, a lock, an open file).

    It holds it for every config, so the sweep stops at the first such trial
    (``sweeps.core.failures.SWEEP_ENDING_ERRORS``).
    """


class TrainerExitError(RuntimeError):
    """The trainer called ``sys.exit`` or raised ``KeyboardInterrupt``: a failure of the trial, not of its process.

    Left as they are, Ray would end the trial's process on them and retry the trial as if its node
    had died, and the traceback that says where would be lost.
    """


class ReportCallError(ValueError):
    """A function trainer called ``run.report`` with an epoch that does not count from 1 and rise.

    Its loop does so for every config (``run.report(epoch)`` in ``for epoch in range(n)``), so the
    sweep stops at the first one (``sweeps.core.failures.SWEEP_ENDING_ERRORS``).
    """


class RunCallError(TypeError):
    """A trainer gave the sweep a value of the wrong kind.

    A string for a metric (to ``run.step``, ``run.report``, ``on_step``, or from ``train_epoch`` or
    ``validate``), a model where ``run.step``'s optimizer goes, a float where its scaler goes: its
    code does the same for every config, so the sweep stops at the first one
    (``sweeps.core.failures.SWEEP_ENDING_ERRORS``).
    """


class ReturnedEarlyError(RuntimeError):
    """A function trainer returned, unstopped, before reporting its last epoch (its loop ignores ``run.epochs``)."""


class DivergedError(StopTrial):
    """Raised from the step hook (or a function trainer's ``run.report``) to leave the trainer's loop at once.

    A :class:`~trainables.protocol.StopTrial`, so a function trainer needs no code of its own for it.
    ``epoch`` is the epoch it happened in, where the raiser knows it.
    """

    def __init__(
        self, divergence: Divergence, epoch: int | None = None, metrics: dict[str, float] | None = None
    ) -> None:
        super().__init__(divergence.reason)
        self.divergence, self.epoch, self.metrics = divergence, epoch, metrics

    def __reduce__(self) -> tuple[type, tuple[Divergence, int | None, dict[str, float] | None]]:
        return (type(self), (self.divergence, self.epoch, self.metrics))  # pickled (Ray): keeps the Divergence


def non_finite_metrics(metrics: dict[str, float], epoch: int, steps: int) -> DivergedError | None:
    """The stop for an epoch whose validation gave a NaN or infinite metric (None when every one is finite).

    Such a trial is diverged whatever the earlier epochs gave: it is never ranked by an older epoch's value.
    ``metrics`` go with the error so that the epoch, NaN and all, is recorded.
    """
    bad = sorted(name for name, value in metrics.items() if not math.isfinite(value))
    if not bad:
        return None
    reason = f"{', '.join(bad)} not finite at epoch {epoch}"
    return DivergedError(Divergence("non_finite", reason, steps, steps), epoch, metrics)


def divergence_result(divergence: Divergence) -> dict[str, Any]:
    """The engine's keys in a diverged trial's last report."""
    return {
        DIVERGED_KEY: 1.0,
        SIGNAL_KEY: divergence.signal,
        REASON_KEY: divergence.reason,
        STEP_KEY: divergence.step,
        ONSET_KEY: divergence.onset,
    }
