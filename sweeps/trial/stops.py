"""How a trial's training is left early: divergence (the detector fired) and a missing metric.

Shared by the epoch loop and a function trainer's ``run``, which both raise and catch them.
"""

from __future__ import annotations

from typing import Any

from sweeps.core.keys import DIVERGED_KEY, ONSET_KEY, REASON_KEY, SIGNAL_KEY, STEP_KEY
from sweeps.divergence import Divergence
from trainables.protocol import StopTrial


class MetricMissingError(RuntimeError):
    """The trainer's results lack the metric the sweep optimizes."""


class ReturnedEarlyError(RuntimeError):
    """A function trainer returned, unstopped, before reporting its last epoch (its loop ignores ``run.epochs``)."""


class DivergedError(StopTrial):
    """Raised from the step hook (or a function trainer's ``run.report``) to leave the trainer's loop at once.

    A :class:`~trainables.protocol.StopTrial`, so a function trainer needs no code of its own for it.
    ``epoch`` is the epoch it happened in, where the raiser knows it.
    """

    def __init__(self, divergence: Divergence, epoch: int | None = None) -> None:
        super().__init__(divergence.reason)
        self.divergence, self.epoch = divergence, epoch

    def __reduce__(self) -> tuple[type, tuple[Divergence, int | None]]:
        return (type(self), (self.divergence, self.epoch))  # pickled (Ray): keeps the Divergence


def divergence_result(divergence: Divergence) -> dict[str, Any]:
    """The engine's keys in a diverged trial's last report."""
    return {
        DIVERGED_KEY: 1.0,
        SIGNAL_KEY: divergence.signal,
        REASON_KEY: divergence.reason,
        STEP_KEY: divergence.step,
        ONSET_KEY: divergence.onset,
    }
