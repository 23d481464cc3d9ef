"""Ray Tune schedulers: ASHA that remembers which trials it cut, or FIFO when ASHA is off."""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from sweeps.spec import SweepSpec
from sweeps.state import SweepState


class RecordingASHA(AsyncHyperBandScheduler):
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
        return FIFOScheduler()
    return RecordingASHA(
        state,
        time_attr="training_iteration",
        max_t=spec.budget.epochs,
        grace_period=spec.asha.grace_period,
        reduction_factor=spec.asha.reduction_factor,
        brackets=spec.asha.brackets,
    )
