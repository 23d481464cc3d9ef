"""Ray Tune callbacks in the driver: close each trial's MLflow run; prune superseded checkpoints."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

from ray.tune import Callback

from sweeps.core.keys import FAILED, RUNNING, TAG_RESTART_REASON, TAG_RESTARTS
from sweeps.core.records import SweepState
from sweeps.results.report import prewarm
from sweeps.tracking.mlflow_client import retry
from sweeps.tracking.sweep_tracker import SweepTracker

log = logging.getLogger(__name__)


class TrackingCallback(Callback):
    """Ends each trial's MLflow run with the status the searcher decided."""

    def __init__(self, state: SweepState, tracker: SweepTracker) -> None:
        self.state = state
        self.tracker = tracker

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Its actor began (a new process or a reused one): it is no longer waiting for a slot."""
        record = self.state.trials.get(trial.trial_id)
        if record is not None:
            record.started = True

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
        tags = {TAG_RESTARTS: str(record.restarts), TAG_RESTART_REASON: cause[:5000]}
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
        self.tracker.finish_trial(record)


class CheckpointPruner(Callback):
    """Keeps each trial's newest checkpoint and deletes the ones it superseded, once it is safe.

    Ray's own ``CheckpointConfig(num_to_keep=1)`` forces a snapshot of the whole experiment state
    (every trial's JSON, the searcher) on each new checkpoint, so that a resumed sweep never points
    at a deleted one: work per epoch that grows with the number of trials. Instead, Tune keeps
    every checkpoint (``num_to_keep=None``) and snapshots on its own period, and this callback
    deletes a superseded checkpoint only after a snapshot that no longer refers to it has been
    written and the next one has begun (Tune asks callbacks for their state inside each snapshot,
    after the trials' state is written), and at the end of the sweep.
    """

    def __init__(self) -> None:
        self.newest: dict[str, Any] = {}
        self.superseded: list[Any] = []
        self.deletable: list[Any] = []

    def on_checkpoint(self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any) -> None:
        """A trial saved a checkpoint: the one it replaces goes to the queue."""
        previous = self.newest.get(trial.trial_id)
        self.newest[trial.trial_id] = checkpoint
        if previous is not None:
            self.superseded.append(previous)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """An ended trial's newest checkpoint stays (best checkpoints, pre-divergence state)."""
        self.newest.pop(trial.trial_id, None)

    on_trial_error = on_trial_complete

    def get_state(self) -> dict[str, Any] | None:
        """Called inside each snapshot: delete what the previous snapshot no longer referred to."""
        _delete(self.deletable)
        self.deletable, self.superseded = self.superseded, []
        return None

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """The final snapshot is written: nothing superseded is needed any more."""
        _delete(self.deletable + self.superseded)
        self.deletable, self.superseded = [], []


def _delete(checkpoints: list[Any]) -> None:
    for checkpoint in checkpoints:
        try:
            checkpoint.filesystem.delete_dir(checkpoint.path)
        except (OSError, FileNotFoundError) as exc:  # already gone, or storage briefly unreachable
            log.warning("could not delete superseded checkpoint %s: %s", checkpoint.path, exc)


class ReportPrewarm(Callback):
    """Starts importing the report's modules (:func:`sweeps.results.report.prewarm`) once the sweep's end is near.

    Near: every trial of the budget has been asked for (the last ones are running), the sweep was
    halted, or ``budget.time`` has :data:`LEAD_S` seconds or less left. Not earlier: the imports
    take 2 to 4 s of CPU, which on a small machine the running trials would otherwise share (at a
    sweep's start they delayed the first validation; at its first result they still cost a 90 s
    sweep of one-second trials about 1% of its training). A sweep that ends before (Ctrl-C) pays
    them in its report.
    """

    LEAD_S = 30.0

    def __init__(self, state: SweepState, trials: int) -> None:
        self.state, self.trials = state, trials
        self.started = False

    def near_end(self) -> bool:
        """Whether the sweep asks for no more trials, or its time budget is about to run out."""
        state = self.state
        if len(state.trials) >= self.trials or state.halted:
            return True
        return state.deadline is not None and time.time() >= state.deadline - self.LEAD_S

    def on_step(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """Each turn of Tune's loop: start the imports once the end is near."""
        if not self.started and self.near_end():
            self.started = True
            prewarm()
