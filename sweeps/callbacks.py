"""Ray Tune callbacks in the driver: close each trial's MLflow run with its final status."""

from __future__ import annotations

from functools import partial
from typing import Any

from ray.tune import Callback

from sweeps.state import FAILED, RUNNING, SweepState
from sweeps.tracking import SweepTracker, retry


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

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Its process or node died; Ray restarts it from its last checkpoint (the run goes on)."""
        record = self.state.trials.get(trial.trial_id)
        if record is None:
            return
        from mlflow.entities import RunTag

        record.restarts += 1
        cause = self.state.errors.pop(trial.trial_id, "") or "the trial process died"
        tags = {"sweep.restarts": str(record.restarts), "sweep.restart_reason": cause[:5000]}
        items = [RunTag(key, value) for key, value in tags.items()]
        retry(partial(self.tracker.client.log_batch, record.run_id, tags=items), "tag restart")

    def _close(self, trial_id: str, reason: str) -> None:
        record = self.state.trials.get(trial_id)
        if record is None:
            return
        if record.status == RUNNING:
            self.state.finish(record, FAILED, reason or "the trial process failed")
        if reason and not record.reason:
            record.reason = reason
        tags = {"sweep.epochs": str(record.epochs)}
        if record.restarts:
            tags["sweep.restarts"] = str(record.restarts)
        if record.signal:
            tags.update({"sweep.signal": record.signal, "sweep.divergence_step": str(record.diverged_at)})
        self.tracker.finish_run(record.run_id, record.status, record.reason, tags)
