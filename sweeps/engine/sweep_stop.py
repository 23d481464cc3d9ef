"""Ending a sweep before its trial budget: its time ran out, or a trial failed in a way every trial would."""

from __future__ import annotations

from typing import Any

from ray import tune

from sweeps.core.records import SweepState


class SweepStop(tune.Stopper):
    """Ends the whole sweep once ``budget.time`` has run out or ``state.halted`` says why.

    The searcher asks for no more trials after either (``OptunaSearcher.suggest``); this stops the
    ones running, which are recorded as interrupted. ``halted``: a trainer that never reports the
    spec's metric fails every trial the same way, and running the rest of the budget would only
    burn it.
    """

    def __init__(self, state: SweepState) -> None:
        self.state = state

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        """No single trial is stopped by this."""
        return False

    def stop_all(self) -> bool:
        """Whether the sweep stops now."""
        return bool(self.state.halted) or self.state.time_up()
