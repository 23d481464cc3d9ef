"""Ray Tune schedulers: ASHA that remembers which trials it cut, or FIFO when ASHA is off.

A diverged trial's last report carries a NaN metric, which ASHA's rung quantile
(``nanpercentile``) would skip: the rung would then hold healthy trials only and cut half of
them, so the more of the space diverges the fewer healthy trials ASHA would promote. Our ASHA
records a diverged trial at its rung as worse than every result instead, so each rung keeps the
share of trials the reduction factor says, counted over every trial that got there.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from sweeps.compat.ray_internals import PROCESS_DIED, error_cause, process_died
from sweeps.core.failures import failure_reason
from sweeps.core.keys import DIVERGED_KEY, RUNNING
from sweeps.core.records import SweepState
from sweeps.spec.sweep_spec import SweepSpec

WORST = 1e300
"""A finite stand-in for a diverged trial's metric at an ASHA rung: worse than any real result.

Finite because ``nanpercentile`` over -inf rewards yields NaN cut-offs, which stop nothing.
"""


class _RecordsErrors:
    """Records why a trial failed, before the searcher hears of it (Ray calls the scheduler first)."""

    state: SweepState

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """Keep a trial Ray restored from being run again when the study says it already ended.

        Ray snapshots its trial table every few seconds; a trial that ended after the last
        snapshot comes back from ``sweeps resume`` as unfinished. It is marked terminated (never
        started), and its concurrency slot is freed as Ray frees it for an ended trial.
        """
        record = self.state.trials.get(trial.trial_id)
        if record is not None and record.status != RUNNING and trial.status == Trial.PENDING:
            trial.set_status(Trial.TERMINATED)
            tune_controller.search_alg.on_trial_complete(trial.trial_id)
        super().on_trial_add(tune_controller, trial)  # type: ignore[misc]

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        """Keep the failure's one-line reason for the searcher and the record.

        Ray calls this on every failure of a trial's process. When it retries the trial (its
        ``budget.retries`` not used up) the callbacks then get ``on_trial_recover`` and the
        searcher nothing; on the last failure the searcher gets ``on_trial_complete(error=True)``.
        """
        timed_out = self.state.timed_out.get(trial.trial_id)
        self.state.errors[trial.trial_id] = timed_out or _reason(error_cause(trial))
        super().on_trial_error(tune_controller, trial)  # type: ignore[misc]


def _reason(cause: BaseException | None) -> str:
    """A failed trial's one-line reason (``sweeps.core.failures``), saying so when its process died."""
    if cause is None:
        return "the trial process failed"
    return f"ActorDiedError: {PROCESS_DIED}" if process_died(cause) else failure_reason(cause)


class RecordingFIFO(_RecordsErrors, FIFOScheduler):
    """FIFO (every trial runs to the end) that records failure reasons."""

    def __init__(self, state: SweepState) -> None:
        super().__init__()
        self.state = state


class RecordingASHA(_RecordsErrors, AsyncHyperBandScheduler):
    """ASHA that records the trials it stops before their last epoch, so they count as pruned."""

    def __init__(self, state: SweepState, time_attr: str, max_t: int, **kwargs: Any) -> None:
        super().__init__(time_attr=time_attr, max_t=max_t, **kwargs)
        self.state, self.time_attr, self.max_t = state, time_attr, max_t

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        """Decide as ASHA does; a stop before ``max_t`` is recorded as a prune."""
        diverged = bool(result.get(DIVERGED_KEY))
        with _no_all_nan_warning():
            action = super().on_trial_result(tune_controller, trial, self._ranked(result))
        if action == TrialScheduler.STOP and result.get(self.time_attr, 0) < self.max_t and not diverged:
            self.state.pruned.add(trial.trial_id)
        return str(action)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        """As ASHA does, with a diverged trial ranked last."""
        with _no_all_nan_warning():
            super().on_trial_complete(tune_controller, trial, self._ranked(result))

    def _ranked(self, result: dict[str, Any]) -> dict[str, Any]:
        """``result`` as ASHA should rank it: a diverged trial's metric becomes the worst value (the sweep's metric)."""
        if not result or not result.get(DIVERGED_KEY):
            return result
        return {**result, self.state.metric: WORST if self.state.mode == "min" else -WORST}


@contextlib.contextmanager
def _no_all_nan_warning() -> Iterator[None]:
    """Keep numpy's "All-NaN slice" warning off the terminal.

    A rung that holds only failed trials (NaN metrics) has no cut-off, and ASHA then stops nothing.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        yield


def rung_epochs(spec: SweepSpec) -> list[int]:
    """The epochs at which ASHA compares trials (every bracket's rungs, below the last epoch).

    Trials always report at these, so batching reports between rungs changes no ASHA decision.
    The same formula as Ray's ``_Bracket``: ``grace * rf ** (k + s)`` for bracket ``s``.
    """
    if not spec.asha.enabled:
        return []
    grace, rf, last = spec.asha.grace_period, spec.asha.reduction_factor, spec.budget.epochs
    epochs: set[int] = set()
    for s in range(spec.asha.brackets):
        rungs = int(math.log(last / grace) / math.log(rf) - s + 1)
        epochs.update(math.ceil(grace * rf ** (k + s)) for k in range(rungs))
    return sorted(e for e in epochs if e < last)


def make_scheduler(spec: SweepSpec, state: SweepState) -> TrialScheduler:
    """ASHA over epochs (the ``epoch`` each report carries) as the spec sets it, or FIFO when disabled."""
    if not spec.asha.enabled:
        return RecordingFIFO(state)
    return RecordingASHA(
        state,
        time_attr="epoch",
        max_t=spec.budget.epochs,
        grace_period=spec.asha.grace_period,
        reduction_factor=spec.asha.reduction_factor,
        brackets=spec.asha.brackets,
    )
