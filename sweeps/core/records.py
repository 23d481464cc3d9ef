"""What the driver knows about each trial, shared by the searcher, scheduler and callbacks."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from sweeps.core.keys import (
    COLLAPSED_AT_END_KEY,
    COMPLETED,
    DIVERGED,
    EPOCH_SECONDS_KEY,
    FIRST_EPOCH_SECONDS_KEY,
    HISTORY_KEY,
    INTERRUPTED,
    OBSERVED_LATER_KEY,
    OBSERVED_SIGNAL_KEY,
    OBSERVED_STEP_KEY,
    RUNNING,
    SKIPPED_KEY,
    STEPS_KEY,
)

METRIC_DIGITS = 5
"""Significant digits of a metric in every line and table the user reads (MLflow holds the full value)."""


def metric_text(value: float | None) -> str:
    """A metric as the terminal, the report and ``list`` show it: 5 significant digits, ``-`` for none."""
    return "-" if value is None else f"{value:.{METRIC_DIGITS}g}"


def observed_text(would_stop: str) -> str:
    """How a would-be stop (``signal@step``, ``divergence.mode: observe``) reads beside a trial."""
    return f"would have stopped at {would_stop} (observe)"


def trial_label(number: int, rescue: bool = False) -> str:
    """How a trial is named to people: ``t003``, or ``t003r`` for its precision rescue."""
    return f"t{number:03d}" + ("r" if rescue else "")


def step_epoch(step: float | None, steps: int, epochs: int) -> int:
    """The epoch a step fell in, from a trial's ``steps`` over its ``epochs``; 0 when unknown.

    Steps count from 1, so with n steps an epoch, step k is in epoch ceil(k / n); exact when every
    epoch has as many steps.
    """
    if step is None or steps <= 0 or epochs <= 0:
        return 0
    return min(epochs, max(1, math.ceil(max(0.0, step) / (steps / epochs))))


UNSTABLE_SHARE = 0.05
"""A trial with more than this share of overflowed (skipped) steps is unstable."""


@dataclass
class TrialRecord:
    """One trial: its Optuna number, MLflow run, parameters and how it ended."""

    number: int
    ray_id: str
    run_id: str
    params: dict[str, Any]
    sampled: dict[str, Any]
    status: str = RUNNING
    reason: str = ""
    value: float | None = None
    epochs: int = 0
    signal: str = ""
    diverged_at: int | None = None
    steps: int = 0
    skipped_steps: int = 0
    epoch_s: float | None = None
    """Median wall seconds of its epochs (its last report's ``EPOCH_SECONDS_KEY``): what its config costs an epoch."""
    sampling_s: float = 0.0
    """Seconds the sampler took to suggest this trial's parameters (Optuna ``ask`` and sampling)."""
    drawn_by: str = ""
    """How the sampler drew its values (``sweeps.store.study.drawn_by``; empty for a rescue)."""
    would_stop: str = ""
    """With ``divergence.mode: observe``: ``signal@step`` of the stop the detector would have made."""
    later_stop: str = ""
    """Observe mode: ``signal@step: reason`` of a later signal no step undoes, after a first flag that may recover."""
    collapsed_at_end: str = ""
    """Observe mode: why its output was still collapsed when its training ended ('' if it was not)."""
    flagged_at: tuple[int, float] | None = None
    """With a would-be stop: the epoch its step fell in and the metric after that epoch (what it recovered from)."""
    rescue_of: TrialRecord | None = None
    rescue: TrialRecord | None = None
    restarts: int = 0
    started: bool = False
    """Whether Tune started it (its actor began): a trial asked ahead of a free slot waits until then. One
    Tune began after ``budget.time`` ran out, which trains nothing, is set back (counted as never started)."""

    @property
    def never_started(self) -> bool:
        """Asked for and never begun: Tune did not start it, and no epoch or step of it was recorded."""
        return not (self.started or self.epochs or self.steps)

    @property
    def skipped_share(self) -> float:
        """Share of optimizer steps that overflowed (were skipped by the loss scaler)."""
        return self.skipped_steps / self.steps if self.steps else 0.0

    @property
    def unstable(self) -> bool:
        """Whether over :data:`UNSTABLE_SHARE` of its steps overflowed (``sweeps export --skip-unstable`` passes it)."""
        return self.skipped_share > UNSTABLE_SHARE

    @property
    def label(self) -> str:
        """How the trial is named to people: ``t003``, or ``t003r`` for its precision rescue."""
        return trial_label(self.number, self.rescue_of is not None)


@dataclass
class SweepState:
    """Per-sweep bookkeeping in the driver: constant work per result, no scans over all trials."""

    metric: str
    mode: str
    trials: dict[str, TrialRecord] = field(default_factory=dict)
    pruned: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    timed_out: dict[str, str] = field(default_factory=dict)
    """Trials whose process ``budget.trial_time`` ended (``sweeps.engine.trial_timeout``), with the reason."""
    counts: dict[str, int] = field(default_factory=dict)
    diverged_by: dict[str, int] = field(default_factory=dict)
    best: TrialRecord | None = None
    rescues_ended: int = 0
    """Of the ended trials, the precision rescues (extra trials, outside the budget's count)."""
    halted: str = ""
    """Why the sweep stopped asking for trials before its budget: a trial failed in a way every trial would."""
    deadline: float | None = None
    """When ``budget.time`` runs out (a ``time.time()``), the same across resumes; None without one."""
    interrupted_ended: int = 0
    """Of the ended trials, the budget's that were interrupted: they do not count toward the budget
    (a resume asks a replacement for each), so they are not counted as done either."""
    fastest_first_epoch_s: float | None = None
    """The least time a trial of this sweep took from when its process began it to its first epoch's end."""
    stopped_asking_left_s: float | None = None
    """Seconds of ``budget.time`` left when the searcher stopped asking because no trial could end an epoch in them."""

    def time_up(self) -> bool:
        """Whether ``budget.time`` has run out."""
        return self.deadline is not None and time.time() >= self.deadline

    def out_of_time(self) -> bool:
        """Whether ``budget.time`` ended the sweep: it ran out, or too little of it was left to start a trial."""
        return self.time_up() or self.stopped_asking_left_s is not None

    def start_by(self) -> float | None:
        """The last time a trial may begin and still end its first epoch by the deadline; None without one.

        Judged as :meth:`no_time_to_start` judges: the deadline less the fastest first epoch so far
        (the deadline itself before a first epoch ended).
        """
        if self.deadline is None:
            return None
        return self.deadline - (self.fastest_first_epoch_s or 0.0)

    def no_time_to_start(self) -> bool:
        """Whether a trial started now could not end its first epoch before ``budget.time`` runs out.

        Judged by the fastest first epoch of this sweep's trials so far, from when a trial's process
        began it (the least any config needed); never before a trial's first epoch ended. Such a
        trial would only train past the deadline, for an epoch at most. Once so, it stays so; the
        seconds that were left then are kept for the sweep's record (``stopped_asking_left_s``).
        """
        if self.stopped_asking_left_s is not None:
            return True
        if self.deadline is None or self.fastest_first_epoch_s is None:
            return False
        left = self.deadline - time.time()
        if left >= self.fastest_first_epoch_s:
            return False
        self.stopped_asking_left_s = max(0.0, left)
        return True

    @property
    def budget_done(self) -> int:
        """The budget's trials that ended and count toward it: no rescue, nothing interrupted."""
        return sum(self.counts.values()) - self.rescues_ended - self.interrupted_ended

    def better(self, value: float, than: float) -> bool:
        """Whether ``value`` beats ``than`` in this sweep's direction."""
        return value < than if self.mode == "min" else value > than

    def observe(self, record: TrialRecord, result: dict[str, Any] | None) -> None:
        """Take a trial's latest result: its epoch and metric value."""
        if not result:
            return
        record.epochs = int(result.get("epoch", result.get("training_iteration", record.epochs)) or record.epochs)
        record.steps = int(result.get(STEPS_KEY, record.steps))
        record.skipped_steps = int(result.get(SKIPPED_KEY, record.skipped_steps))
        seconds = result.get(EPOCH_SECONDS_KEY)
        if isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0:
            record.epoch_s = float(seconds)
        first = result.get(FIRST_EPOCH_SECONDS_KEY)
        if isinstance(first, (int, float)) and math.isfinite(first) and first > 0:
            if self.fastest_first_epoch_s is None or first < self.fastest_first_epoch_s:
                self.fastest_first_epoch_s = float(first)
        if result.get(OBSERVED_SIGNAL_KEY):
            if not record.would_stop:
                record.flagged_at = self._flagged_at(record, result)
            record.would_stop = f"{result[OBSERVED_SIGNAL_KEY]}@{result.get(OBSERVED_STEP_KEY, '?')}"
        if result.get(OBSERVED_LATER_KEY):
            record.later_stop = str(result[OBSERVED_LATER_KEY])
        if result.get(COLLAPSED_AT_END_KEY):
            record.collapsed_at_end = str(result[COLLAPSED_AT_END_KEY])
        # A diverged trial's last report holds a NaN metric; the epochs it validated since its
        # previous report (its history) hold what it reached: its last finite value, as in MLflow.
        values = [result.get(self.metric), *(v for _, v in reversed(result.get(HISTORY_KEY) or []))]
        value = next((v for v in values if isinstance(v, (int, float)) and math.isfinite(v)), None)
        if value is not None:
            record.value = float(value)

    def _flagged_at(self, record: TrialRecord, result: dict[str, Any]) -> tuple[int, float] | None:
        """The epoch of a would-be stop's step (from the steps per epoch so far) and the metric after it."""
        step = result.get(OBSERVED_STEP_KEY)
        epoch = step_epoch(step if isinstance(step, (int, float)) else None, record.steps, record.epochs)
        if not epoch:
            return None
        values = {int(e): v for e, v in result.get(HISTORY_KEY) or []}
        values[record.epochs] = result.get(self.metric, values.get(record.epochs))
        after = [(e, v) for e, v in sorted(values.items()) if e >= epoch and isinstance(v, (int, float))]
        finite = [(e, float(v)) for e, v in after if math.isfinite(v)]
        return finite[0] if finite else None

    def finish(self, record: TrialRecord, status: str, reason: str = "") -> None:
        """Mark a trial ended and update the counts and the best completed trial."""
        record.status, record.reason = status, reason
        self.counts[status] = self.counts.get(status, 0) + 1
        if record.rescue_of is not None:
            self.rescues_ended += 1
        elif status == INTERRUPTED:
            self.interrupted_ended += 1
        if status == DIVERGED:
            self.diverged_by[record.signal] = self.diverged_by.get(record.signal, 0) + 1
        # a rescue (the same config at bf16) is never exported, so it is never the sweep's best either
        if status == COMPLETED and record.value is not None and record.rescue_of is None:
            if self.best is None or self.best.value is None or self.better(record.value, self.best.value):
                self.best = record

    @property
    def running(self) -> int:
        """Trials started and not yet ended."""
        return len(self.trials) - sum(self.counts.values())
