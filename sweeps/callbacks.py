"""Ray Tune callbacks in the driver: close each trial's MLflow run with its final status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.cloudpickle as cloudpickle
from ray.tune import Callback

from sweeps.state import FAILED, RUNNING, SweepState
from sweeps.tracking import SweepTracker


def error_reason(trial: Any) -> str:
    """The one-line cause of a Ray trial's error, e.g. ``ValueError: bad kernel``; '' if unknown."""
    error: Any = None
    path = getattr(trial, "pickled_error_file", None)
    if path and Path(path).is_file():
        try:
            with open(path, "rb") as handle:
                error = cloudpickle.load(handle)
        except Exception:  # noqa: BLE001 - an unreadable error file still ends the trial
            error = None
    cause = getattr(error, "cause", None) or error
    if cause is None:
        return ""
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".strip()


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
        self._close(trial.trial_id, error_reason(trial))

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
