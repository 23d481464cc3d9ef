"""The compact live view of a running sweep: one status line, and a line per trial as it ends."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from sweeps.core.records import SweepState, TrialRecord


def status_line(state: SweepState, total: int, elapsed: float) -> str:
    """One line: trials ended/planned, running, each ending's count, best so far.

    Precision rescues are extra trials: ``trials`` counts the budget's trials only (never more
    than planned), and the rescues that ended are counted beside it.
    """
    ended = sum(state.counts.values()) - state.rescues_ended
    rescues = (
        f" (+{state.rescues_ended} rescue{'s' if state.rescues_ended != 1 else ''})" if state.rescues_ended else ""
    )
    counts = " · ".join(_count(state, name, n) for name, n in sorted(state.counts.items()))
    best = state.best
    best_text = (
        f"best {state.metric}={best.value:.4g} (t{best.number:03d})" if best and best.value is not None else "best -"
    )
    parts = [
        f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}]",
        f"trials {ended}/{total}{rescues}",
        f"running {state.running}",
    ]
    return " · ".join(parts + ([counts] if counts else []) + [best_text])


def _count(state: SweepState, name: str, n: int) -> str:
    if name == "diverged" and state.diverged_by:
        return f"diverged {n} (" + ", ".join(f"{k} {v}" for k, v in sorted(state.diverged_by.items())) + ")"
    return f"{name} {n}"


def event_line(record: TrialRecord, metric: str) -> str:
    """One line for a trial that just ended."""
    value = f"{metric}={record.value:.4g}" if record.value is not None else f"{metric}=-"
    reason = f" ({record.reason})" if record.reason else ""
    return f"  {record.label:<5} {record.status:<11} {value} after {record.epochs} epoch(s){reason}"


class LiveView(Callback):
    """Redraws one status line on a terminal; elsewhere prints a line per ended trial."""

    def __init__(self, state: SweepState, total: int, stream: TextIO | None = None, interval: float = 0.5) -> None:
        self.state, self.total = state, total
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.interval = interval
        self.started = time.monotonic()
        self.last_draw = 0.0

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.tty or (not force and now - self.last_draw < self.interval):
            return
        self.last_draw = now
        self.stream.write("\r\x1b[2K" + status_line(self.state, self.total, now - self.started))
        self.stream.flush()

    def _ended(self, trial_id: str) -> None:
        record = self.state.trials.get(trial_id)
        if record is not None:
            prefix = "\r\x1b[2K" if self.tty else ""
            self.stream.write(prefix + event_line(record, self.state.metric) + "\n")
        if not self.tty:
            self.stream.write(status_line(self.state, self.total, time.monotonic() - self.started) + "\n")
        self.stream.flush()
        self._draw(force=True)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """Redraw the status line (throttled)."""
        self._draw()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Print the ended trial."""
        self._ended(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Print the failed trial."""
        self._ended(trial.trial_id)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Leave the cursor on a fresh line."""
        if self.tty:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
