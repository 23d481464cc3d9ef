"""The compact live view of a running sweep, and the summary table at its end."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from sweeps.state import SweepState, TrialRecord


def status_line(state: SweepState, total: int, elapsed: float) -> str:
    """One line: trials ended/planned, running, each ending's count, best so far."""
    ended = sum(state.counts.values())
    counts = " · ".join(_count(state, name, n) for name, n in sorted(state.counts.items()))
    best = state.best
    best_text = (
        f"best {state.metric}={best.value:.4g} (t{best.number:03d})" if best and best.value is not None else "best -"
    )
    parts = [
        f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}]",
        f"trials {ended}/{total}",
        f"running {state.running}",
    ]
    return " · ".join(parts + ([counts] if counts else []) + [best_text])


def _count(state: SweepState, name: str, n: int) -> str:
    if name == "diverged" and state.diverged_by:
        return f"diverged {n} (" + ", ".join(f"{k} {v}" for k, v in sorted(state.diverged_by.items())) + ")"
    return f"{name} {n}"


def divergence_summary(state: SweepState) -> str:
    """Diverged trials by signal, and what their precision rescues showed ('' when none diverged)."""
    if not state.diverged_by:
        return ""
    lines = ["diverged by signal: " + ", ".join(f"{k} {v}" for k, v in sorted(state.diverged_by.items()))]
    rescued = [r for r in state.trials.values() if r.rescue is not None]
    if rescued:
        because = [r.label for r in rescued if r.rescue is not None and r.rescue.status == "completed"]
        anyway = [r.label for r in rescued if r.rescue is not None and r.rescue.status == "diverged"]
        other = len(rescued) - len(because) - len(anyway)
        lines.append(f"diverged because of precision (the bf16/fp32 rescue completed): {len(because)} {because}")
        lines.append(f"diverged anyway (the rescue diverged too): {len(anyway)} {anyway}")
        if other:
            lines.append(f"rescue cut short (pruned, failed or interrupted): {other}")
    return "\n".join(lines)


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


def summary_table(state: SweepState) -> str:
    """A plain-text table of every trial: number, status, metric, epochs, sampled values, reason."""
    from sweeps.report import result_rows, terminal_table

    rows = result_rows(state)
    records = sorted(state.trials.values(), key=lambda r: (r.number, r.rescue_of is not None))
    sampled = list(dict.fromkeys(name for r in records for name in r.sampled))
    return terminal_table(rows, state.metric, sampled)
