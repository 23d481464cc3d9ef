"""``budget.trial_time``: each trial's own wall-clock limit, and ending a trial that overruns it.

The trial itself stops at the end of the epoch it is in once the limit has passed
(``EpochLoop.end_epoch``; recorded ``pruned``). A trial that has not ended that epoch a grace
period later (a hang: a deadlocked DataLoader, a blocking read, a loop that never returns) is
ended here, in the driver: its process is killed and it is recorded ``failed``, with the reason
below, and not restarted.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from sweeps.compat.ray_internals import end_trial_process
from sweeps.core.records import SweepState

GRACE_SHARE, MIN_GRACE_S = 0.1, 10.0
"""How long after its limit a trial may take to end its epoch: a tenth of the limit, at least 10 s."""
CHECK_EVERY_S = 1.0


def grace_s(limit_s: float) -> float:
    """Seconds after ``budget.trial_time`` before a trial still in its epoch is ended."""
    return max(MIN_GRACE_S, GRACE_SHARE * limit_s)


class TrialTimeout(Callback):
    """Kills the process of a trial still running ``grace_s`` after its ``budget.trial_time``."""

    def __init__(self, state: SweepState, limit_s: float) -> None:
        self.state, self.limit_s = state, limit_s
        self.started: dict[str, float] = {}
        self.checked = 0.0

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial's process began it (again, after a restart): its time counts from now."""
        self.started[trial.trial_id] = time.monotonic()

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """At most every second: end each running trial that overran its limit and grace."""
        now = time.monotonic()
        if now - self.checked < CHECK_EVERY_S:
            return
        self.checked = now
        overdue = self.limit_s + grace_s(self.limit_s)
        for trial in trials:
            began = self.started.get(trial.trial_id)
            if began is None or trial.status != "RUNNING" or trial.trial_id in self.state.timed_out:
                continue
            if now - began >= overdue:
                self.state.timed_out[trial.trial_id] = self._reason()  # before Tune hears of the dead process
                if not end_trial_process(trial):
                    del self.state.timed_out[trial.trial_id]

    def _reason(self) -> str:
        return (
            f"budget.trial_time ({self.limit_s:g} s) ran out and the epoch the trial was in had not ended "
            f"{grace_s(self.limit_s):g} s later (a hang, or an epoch longer than the limit allows): "
            "its process was ended"
        )
