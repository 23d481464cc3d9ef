"""Stopping a sweep early when a trial failed in a way every trial would (``SweepState.halted``)."""

from __future__ import annotations

from typing import Any

from ray import tune

from sweeps.core.records import SweepState


class HaltOnTrainerError(tune.Stopper):
    """Ends the whole sweep once ``state.halted`` says why (set by the searcher when a trial ends).

    A trainer that never reports the spec's metric, or returns before its last epoch, fails every
    trial the same way: running the rest of the budget would only burn it. The searcher asks for no
    more trials; this stops the ones running, which are recorded as interrupted.
    """

    def __init__(self, state: SweepState) -> None:
        self.state = state

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        """No single trial is stopped by this."""
        return False

    def stop_all(self) -> bool:
        """Whether the sweep stops now."""
        return bool(self.state.halted)
