"""Ray Tune schedulers: ASHA that remembers which trials it cut, or FIFO when ASHA is off."""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from sweeps.errors import error_reason
from sweeps.spec import SweepSpec
from sweeps.state import SweepState


class _RecordsErrors:
    """Records why a trial failed, before the searcher hears of it (Ray calls the scheduler first)."""

    state: SweepState

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        """Keep the failure's one-line reason for the searcher and the record.

        Ray calls this on every failure of a trial's process. When it retries the trial (its
        ``budget.retries`` not used up) the callbacks then get ``on_trial_recover`` and the
        searcher nothing; on the last failure the searcher gets ``on_trial_complete(error=True)``.
        """
        self.state.errors[trial.trial_id] = error_reason(trial) or "the trial process failed"
        super().on_trial_error(tune_controller, trial)  # type: ignore[misc]


class RecordingFIFO(_RecordsErrors, FIFOScheduler):
    """FIFO (every trial runs to the end) that records failure reasons."""

    def __init__(self, state: SweepState) -> None:
        super().__init__()
        self.state = state


class RecordingASHA(_RecordsErrors, AsyncHyperBandScheduler):
    """ASHA that records the trials it stops before their last epoch, so they count as pruned."""

    def __init__(self, state: SweepState, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = state

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        """Decide as ASHA does; a stop before ``max_t`` is recorded as a prune."""
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get(self._time_attr, 0) < self._max_t:
            self.state.pruned.add(trial.trial_id)
        return str(action)


def make_scheduler(spec: SweepSpec, state: SweepState) -> TrialScheduler:
    """ASHA over epochs (``training_iteration``) as the spec sets it, or FIFO when disabled."""
    if not spec.asha.enabled:
        return RecordingFIFO(state)
    return RecordingASHA(
        state,
        time_attr="training_iteration",
        max_t=spec.budget.epochs,
        grace_period=spec.asha.grace_period,
        reduction_factor=spec.asha.reduction_factor,
        brackets=spec.asha.brackets,
    )
