"""Ray Tune callbacks in the driver: close each trial's MLflow run with its final status."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from sweeps.state import FAILED, RUNNING, SweepState
from sweeps.tracking import SweepTracker


class TrackingCallback(Callback):
    """Ends each trial's MLflow run with the status the searcher decided."""

    def __init__(self, state: SweepState, tracker: SweepTracker) -> None:
        self.state = state
        self.tracker = tracker

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial ended without error: completed, pruned or interrupted."""
        self._close(trial.trial_id, "")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial raised (or its process died)."""
        self._close(trial.trial_id, self.state.errors.get(trial.trial_id, ""))

    def _close(self, trial_id: str, reason: str) -> None:
        record = self.state.trials.get(trial_id)
        if record is None:
            return
        if record.status == RUNNING:
            self.state.finish(record, FAILED, reason or "the trial process failed")
        if reason and not record.reason:
            record.reason = reason
        tags = {"sweep.epochs": str(record.epochs)}
        if record.signal:
            tags.update({"sweep.signal": record.signal, "sweep.divergence_step": str(record.diverged_at)})
        self.tracker.finish_run(record.run_id, record.status, record.reason, tags)
