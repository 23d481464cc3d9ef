"""The end-of-sweep summary in plain text: the trial table and what the divergence stops showed."""

from __future__ import annotations

from sweeps.core.keys import COMPLETED, DIVERGED
from sweeps.core.records import SweepState, metric_text
from sweeps.results.report import result_rows, terminal_table


def summary_table(state: SweepState) -> str:
    """A plain-text table of every trial: number, status, metric, epochs, sampled values, reason."""
    rows = result_rows(state)
    records = sorted(state.trials.values(), key=lambda r: (r.number, r.rescue_of is not None))
    sampled = list(dict.fromkeys(name for r in records for name in r.sampled))
    return terminal_table(rows, state.metric, sampled)


def divergence_summary(state: SweepState, observing: bool = False) -> str:
    """Diverged trials by signal, what their precision rescues showed, and would-be stops ('' when none).

    ``observing``: the sweep ran with ``divergence.mode: observe``, so its would-be stops are listed
    even when there are none (a line saying so).
    """
    observed = observed_stops(state, observing)
    if not state.diverged_by:
        return "\n".join(observed)
    lines = ["diverged by signal: " + ", ".join(f"{k} {v}" for k, v in sorted(state.diverged_by.items()))]
    rescues = sum(1 for r in state.trials.values() if r.rescue_of is not None and r.status == DIVERGED)
    if rescues:  # a rescue is an extra trial: say so, or the counts read as more of the budget's trials
        total = sum(state.diverged_by.values())
        lines[0] += f" ({total} trials, {rescues} of them {'a rescue' if rescues == 1 else 'rescues'})"
    rescued = [r for r in state.trials.values() if r.rescue is not None]
    if rescued:
        because = [r.label for r in rescued if r.rescue is not None and r.rescue.status == COMPLETED]
        anyway = [r.label for r in rescued if r.rescue is not None and r.rescue.status == DIVERGED]
        other = len(rescued) - len(because) - len(anyway)
        lines.append(f"diverged because of precision (the bf16/fp32 rescue completed): {_counted(because)}")
        lines.append(f"diverged anyway (the rescue diverged too): {_counted(anyway)}")
        if other:
            lines.append(f"rescue cut short (pruned, failed or interrupted): {other}")
    return "\n".join(lines + observed)


def _counted(labels: list[str]) -> str:
    """``2 (t003, t007)``; ``0`` for none."""
    return f"{len(labels)} ({', '.join(labels)})" if labels else "0"


def observed_stops(state: SweepState, observing: bool = False) -> list[str]:
    """With ``divergence.mode: observe``: each trial the detector would have stopped, and how it ended.

    A would-be stop of a trial that completed among the best is a stop the defaults would have
    got wrong on this loop: the line to read when calibrating the signals. ``observing`` with none:
    one line that says the detector watched every step and no signal fired.
    """
    watched = sorted((r for r in state.trials.values() if r.would_stop), key=lambda r: r.number)
    if not watched:
        none = "would have stopped (observe mode): 0 (the detector watched every step; no signal fired)"
        return [none] if observing else []
    done = sorted(r.value for r in state.trials.values() if r.status == COMPLETED and r.value is not None)
    if state.mode == "max":
        done.reverse()
    lines = [f"would have stopped (observe mode): {len(watched)}"]
    for r in watched:
        end, rank = r.status, ""
        if r.value is not None:
            end = f"{r.status} {state.metric}={metric_text(r.value)}"
            if r.status == COMPLETED:
                rank = f", rank {done.index(r.value) + 1} of {len(done)} completed"
        lines.append(f"  {r.label} {r.would_stop} -> {end}{rank}")
    return lines
