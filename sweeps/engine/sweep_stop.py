"""Ending a sweep before its trial budget: its time ran out, or a trial failed in a way every trial would."""

from __future__ import annotations

import time
from typing import Any

from ray import tune

from sweeps.core.keys import RUNNING
from sweeps.core.records import SweepState

GRACE_SHARE, GRACE_MIN_S = 0.1, 30.0
"""When ``budget.time`` runs out, a running trial has until its epoch ends, at most this share of the
budget later (and never less than ``GRACE_MIN_S``), before Tune stops it mid-epoch."""


def deadline_grace(time_s: float | None) -> float:
    """How long after ``budget.time`` ran out the trials still in an epoch are stopped (seconds)."""
    return max(GRACE_MIN_S, GRACE_SHARE * time_s) if time_s else 0.0


class SweepStop(tune.Stopper):
    """Ends the whole sweep once ``budget.time`` has run out or ``state.halted`` says why.

    The searcher asks for no more trials after either (``OptunaSearcher.suggest``), nor once less of
    ``budget.time`` is left than any trial needed to end its first epoch (``SweepState.no_time_to_start``).
    ``halted``: a trainer that never reports the spec's metric fails every trial the same way, and running the
    rest of the budget would only burn it: the running trials are stopped now, recorded as
    interrupted. ``budget.time``: each running trial ends itself at the end of the epoch it is in
    (it reads the deadline there, and its epoch is recorded); the ones still in an epoch
    ``grace_s`` later are stopped then. Stopping them all at the deadline lost a user's epochs of
    15 and 40 s, ten seconds from their ends, where the docs promised the epoch would end.
    """

    def __init__(self, state: SweepState, grace_s: float = 0.0) -> None:
        self.state, self.grace_s = state, grace_s

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        """No single trial is stopped by this."""
        return False

    def stop_all(self) -> bool:
        """Whether the sweep stops now.

        With ``budget.time``: once no trial that began is still running, when the time ran out or
        the searcher stopped asking. The trials Tune asked for ahead of a free slot and has not
        begun are ended then, never started: Tune began each as a slot freed, after the deadline
        too, and it trained a first epoch past it.
        """
        if self.state.halted:
            return True
        if self.state.deadline is None:
            return False
        if not self.state.time_up():
            return self.state.no_time_to_start() and not self._running()
        return not self._running() or time.time() >= self.state.deadline + self.grace_s

    def _running(self) -> bool:
        """Whether a trial Tune began is still running (one asked for ahead of a free slot is not)."""
        return any(r.status == RUNNING and r.started for r in self.state.trials.values())
