"""The compact live view of a running sweep: one status line, and a line per trial as it ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from ray.tune import Callback

from sweeps.core.keys import EPOCH
from sweeps.core.records import SweepState, TrialRecord, metric_text, observed_text, trial_label


def status_line(
    state: SweepState, total: int, elapsed: float, left: float | None = None, running: int | None = None
) -> str:
    """One line: trials ended/planned, running, each ending's count, best so far, time left (when known).

    Precision rescues are extra trials: ``trials`` counts the budget's trials only (never more
    than planned), and the rescues that ended are counted beside it. An interrupted trial is not
    done: a resume asks another in its place (it is counted as ``interrupted``). ``running``: the
    trials training now, as Tune knows them (default: the ones asked for and not ended, which
    counts a trial still waiting for CPUs).
    """
    ended = state.budget_done
    rescues = (
        f" (+{state.rescues_ended} rescue{'s' if state.rescues_ended != 1 else ''})" if state.rescues_ended else ""
    )
    counts = " · ".join(_count(state, name, n) for name, n in sorted(state.counts.items()))
    best = state.best
    best_text = "best -"
    if best is not None and best.value is not None:
        best_text = f"best {state.metric}={metric_text(best.value)} ({trial_label(best.number)})"
    parts = [
        f"[{_clock(elapsed)}]",
        f"trials {ended}/{total} done{rescues}",
        f"running {state.running if running is None else running}",
    ]
    return " · ".join(parts + ([counts] if counts else []) + [best_text, _left(left, ended, total)])


def estimate_left(
    ended_here: int, since_first_start: float, remaining: int, running_left: Sequence[float] = ()
) -> float | None:
    """Seconds until the last trial ends (None before a trial ended).

    The pace is trials ended per second since the first trial started: it counts the trials that
    run at once, and the short ones ASHA or divergence stopped as the sweep met them so far. It is
    never less than what a running trial still needs at its own pace (``running_left``, see
    :func:`trial_left`): trials that diverged in a few steps make the pace fast while a slow
    configuration (fp16 on a CPU, say) still has most of its epochs to go.
    """
    if ended_here <= 0 or since_first_start <= 0:
        return None
    return max(since_first_start / ended_here * remaining, *running_left, 0.0)


def trial_left(result: dict[str, Any], epochs: int, now: float, started: float | None = None) -> float | None:
    """Seconds a running trial still needs at its own pace (None when nothing says).

    From its last result: its seconds per epoch so far (Tune's ``time_total_s`` over the result's
    epoch) times the epochs it has left, less the time since that result. Before its first result,
    from when it ``started``: its first epoch has taken at least that long, and so may each of the
    others.
    """
    epoch = result.get(EPOCH) or result.get("training_iteration")
    total, at = result.get("time_total_s"), result.get("timestamp")
    if not isinstance(epoch, int | float) or epoch <= 0 or not isinstance(total, int | float):
        return None if started is None else max(0.0, now - started) * max(0, epochs - 1)
    since = now - at if isinstance(at, int | float) else 0.0
    return max(0.0, total / epoch * max(0.0, epochs - epoch) - since)


def _left(left: float | None, ended: int, total: int) -> str:
    if ended >= total:
        return "finishing"
    return "time left ?" if left is None else f"~{_clock(left)} left"


def _clock(seconds: float) -> str:
    """``mm:ss``, or ``h:mm:ss`` from an hour."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def _count(state: SweepState, name: str, n: int) -> str:
    if name == "diverged" and state.diverged_by:
        return f"diverged {n} (" + ", ".join(f"{k} {v}" for k, v in sorted(state.diverged_by.items())) + ")"
    return f"{name} {n}"


def event_line(record: TrialRecord, metric: str) -> str:
    """One line for a trial that just ended."""
    value = f"{metric}={metric_text(record.value)}"
    reason = f" ({record.reason})" if record.reason else ""
    if record.would_stop:  # observe mode: what the detector would have done, as the trial ends
        reason += f" · {observed_text(record.would_stop)}"
    if record.status == "diverged":  # stopped within the epoch it counts (its step is in the reason): the
        last = f", last {value}" if record.value is not None else ""  # value is an earlier epoch's, if any
        return f"  {record.label:<5} {record.status:<11} in epoch {record.epochs}{last}{reason}"
    return f"  {record.label:<5} {record.status:<11} {value} after {record.epochs} epoch(s){reason}"


class LiveView(Callback):
    """Redraws one status line on a terminal; elsewhere prints a line per ended trial."""

    def __init__(
        self, state: SweepState, total: int, stream: TextIO | None = None, interval: float = 0.5, epochs: int = 0
    ) -> None:
        self.state, self.total, self.epochs = state, total, epochs
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.interval = interval
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.first_start: float | None = None
        """When the first trial of this run started (the pace of trials is measured from there)."""
        self.ended_here = 0
        """Trials that ended since then (a resumed sweep's earlier trials do not count to its pace)."""
        self.running: int | None = None
        """Trials training now (Tune's RUNNING ones; a trial asked for and waiting for CPUs is not)."""
        self.started_at: dict[str, float] = {}
        """Each trial's start (epoch seconds), by Tune's trial id."""
        self.results: dict[str, dict[str, Any]] = {}
        """Each trial's last result, by Tune's trial id (kept here: reading ``Trial.last_result`` before a
        trial's first report waits on its actor)."""
        self.running_left: list[float] = []
        """What each running trial still needs, in seconds at its own pace (:func:`trial_left`; ``epochs`` known)."""

    def line(self) -> str:
        """The status line now."""
        now = time.monotonic()
        since = now - self.first_start if self.first_start is not None else 0.0
        remaining = max(0, self.total - self.state.budget_done)
        left = estimate_left(self.ended_here, since, remaining, self.running_left)
        if self.state.deadline is not None:  # budget.time: the sweep ends by then whatever the pace
            until = max(0.0, self.state.deadline - time.time())
            left = until if left is None else min(left, until)
        return status_line(self.state, self.total, now - self.started, left, self.running)

    def _due(self) -> bool:
        """Whether a throttled redraw would draw now (on a terminal, ``interval`` after the last)."""
        return self.tty and time.monotonic() - self.last_draw >= self.interval

    def _draw(self, force: bool = False) -> None:
        if not self.tty or not (force or self._due()):
            return
        self.last_draw = time.monotonic()
        self.stream.write("\r\x1b[2K" + self.line())
        self.stream.flush()

    def _count_running(self, trials: list[Any], ended: Any = None) -> None:
        running = [t for t in trials if t.status == "RUNNING" and t is not ended]
        self.running = len(running)
        if self.epochs > 0:
            now = time.time()
            found = (
                trial_left(self.results.get(t.trial_id, {}), self.epochs, now, self.started_at.get(t.trial_id))
                for t in running
            )
            self.running_left = [left for left in found if left is not None]

    def _ended(self, trials: list[Any], trial: Any) -> None:
        trial_id = trial.trial_id
        self.results.pop(trial_id, None)
        self.started_at.pop(trial_id, None)
        self._count_running(trials, ended=trial)
        record = self.state.trials.get(trial_id)
        self.ended_here += 1
        if record is not None:
            prefix = "\r\x1b[2K" if self.tty else ""
            self.stream.write(prefix + event_line(record, self.state.metric) + "\n")
        if not self.tty:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
        self._draw(force=True)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Start the clock of the trials' pace at the first trial, and this trial's own."""
        if self.first_start is None:
            self.first_start = time.monotonic()
        if trial is not None:
            self.started_at[trial.trial_id] = time.time()

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        """Keep the trial's result: its pace, for the time left."""
        self.results[trial.trial_id] = result

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """Redraw the status line (throttled): the trials are counted only when it is drawn."""
        if self._due():
            self._count_running(trials)
            self._draw()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Print the ended trial."""
        self._ended(trials, trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Print the failed trial."""
        self._ended(trials, trial)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Leave the cursor on a fresh line."""
        if self.tty:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
