"""How a trial ended, decided from plain data: the rules, without Ray, Optuna or MLflow.

The searcher hands these functions what it knows (the trial's last report, whether Ray saw an
error, whether ASHA stopped it, its epochs and metric) and carries out what they return: the
status and reason recorded everywhere, how Optuna is told, and whether a precision rescue runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sweeps.core.failures import is_oom
from sweeps.core.keys import (
    COMPLETED,
    DIVERGED,
    DIVERGED_KEY,
    EPOCH,
    FAILED,
    FAILED_KEY,
    INTERRUPTED,
    NOT_STARTED_KEY,
    OBSERVED_REASON_KEY,
    OBSERVED_SIGNAL_KEY,
    OBSERVED_STEP_KEY,
    OOM,
    PRUNED,
    REASON_KEY,
    SIGNAL_KEY,
    STEP_KEY,
    TIME_UP_KEY,
)

RESCUED_SIGNALS = ("loss_scale",)
"""Divergence signals a precision rescue answers: loss-scale collapse is fp16's own failure."""
RESCUED_PRECISIONS = ("fp16", "fp16-o2")

# How Optuna is told of an ending (see :func:`study_verdict`).
TELL_COMPLETE, TELL_PRUNED, TELL_INFEASIBLE, TELL_FAIL = "complete", "pruned", "infeasible", "fail"


@dataclass(frozen=True)
class Outcome:
    """How a trial ended: its status, a one-line reason, and for a divergence its signal and step."""

    status: str
    reason: str = ""
    signal: str = ""
    step: int | None = None


@dataclass(frozen=True)
class Ending:
    """What the driver knows when a trial ends."""

    result: dict[str, Any] | None
    """The trial's last report (None if it never reported)."""
    error: bool = False
    """Ray saw the trial's process fail (an exception raised past the trial, or a dead process)."""
    error_reason: str = ""
    """The one-line cause Ray recorded for that failure ('' if unknown)."""
    pruned: bool = False
    """ASHA stopped the trial before its last epoch."""
    epochs: int = 0
    """Epochs the trial completed."""
    value: float | None = None
    """Its last finite metric value."""


NOT_STARTED = "budget.time ran out before it started (it waited for its process or a free slot)"
"""Why a trial asked for ahead of a free slot ended untrained: never begun, or begun after the deadline (or with
less time left than the sweep's fastest first epoch when it was asked for)."""


def ran_out(limit: str, epochs: int, of: int) -> str:
    """Why a trial cut by a time limit (``limit``: ``budget.time``, ...) ended, after ``epochs`` of ``of``."""
    if epochs <= 0:
        return f"{limit} ran out before its first epoch ended (of {of})"
    return f"{limit} ran out after epoch {epochs} of {of}"


def decide_outcome(ending: Ending, metric: str, epochs_budget: int) -> Outcome:
    """The status and reason of a trial that ended (see the module docstring)."""
    result = ending.result or {}
    if result.get(NOT_STARTED_KEY):
        return Outcome(INTERRUPTED, NOT_STARTED)
    if ending.error or result.get(FAILED_KEY):
        reason = "" if ending.error else str(result.get(REASON_KEY, ""))
        reason = reason or ending.error_reason or "the trial process failed"
        return Outcome(OOM if is_oom(reason) else FAILED, reason)
    if result.get(DIVERGED_KEY):
        signal, step = str(result.get(SIGNAL_KEY, "")), int(result.get(STEP_KEY, 0))
        return Outcome(DIVERGED, f"{signal}: {result.get(REASON_KEY, '')} (step {step})", signal, step)
    if ending.pruned:
        return Outcome(PRUNED, f"stopped by ASHA after epoch {ending.epochs}")
    if result.get(TIME_UP_KEY):
        limit = f"{float(result[TIME_UP_KEY]):g} s"
        return Outcome(PRUNED, ran_out(f"budget.trial_time ({limit})", ending.epochs, epochs_budget))
    if not ending.result:
        return Outcome(INTERRUPTED, "stopped before it reported")
    last = result.get(metric)
    final_bad = not (isinstance(last, (int, float)) and math.isfinite(last))
    if result.get(OBSERVED_SIGNAL_KEY) and (ending.value is None or final_bad):
        # observe mode: the detector's signal was right, the trial ran on to a non-finite end
        signal, step = str(result[OBSERVED_SIGNAL_KEY]), int(result.get(OBSERVED_STEP_KEY, 0))
        reason = f"{signal}: {result.get(OBSERVED_REASON_KEY, '')} (step {step}; observed, not stopped)"
        return Outcome(DIVERGED, reason, signal, step)
    if ending.value is None:
        return Outcome(FAILED, f"no finite {metric} reported")
    if ending.epochs < epochs_budget:
        return Outcome(INTERRUPTED, f"stopped after epoch {ending.epochs} of {epochs_budget}")
    return Outcome(COMPLETED)


def final_result(result: dict[str, Any], epochs_budget: int) -> bool:
    """Whether a trial's result is its last: a failure, a divergence, or its last epoch."""
    ended = result.get(FAILED_KEY) or result.get(DIVERGED_KEY)
    return bool(ended) or int(result.get(EPOCH, 0) or 0) >= epochs_budget


def wants_rescue(status: str, signal: str, precision: str, *, enabled: bool, is_rescue: bool) -> bool:
    """Whether a trial is run once more at bf16/fp32: an fp16 trial whose loss scale collapsed.

    ``precision`` is the trial's canonical precision name; a rescue is never rescued again.
    """
    rescuable = status == DIVERGED and signal in RESCUED_SIGNALS and precision in RESCUED_PRECISIONS
    return enabled and not is_rescue and rescuable


def study_verdict(status: str, diverged_as: str) -> str:
    """How Optuna is told of an ending: complete, pruned, infeasible, or fail.

    Diverged and out-of-memory trials are *infeasible* (an Optuna constraint above 0) when the spec
    says so (``search.diverged_as: infeasible``): TPE ranks them below every feasible trial and
    moves away from their region. Everything else that did not complete or prune is a FAIL.
    """
    if status == COMPLETED:
        return TELL_COMPLETE
    if status == PRUNED:
        return TELL_PRUNED
    if status in (DIVERGED, OOM) and diverged_as == "infeasible":
        return TELL_INFEASIBLE
    return TELL_FAIL


def fresh_intermediate_values(history: list[tuple[int, float]], last_reported: int) -> list[tuple[int, float]]:
    """The epochs of a report's history that Optuna has not been told yet, with finite values."""
    return [
        (int(epoch), float(value))
        for epoch, value in history
        if epoch > last_reported and isinstance(value, (int, float)) and math.isfinite(value)
    ]
