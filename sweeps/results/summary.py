"""The end-of-sweep summary in plain text: the trial table and what the divergence stops showed."""

from __future__ import annotations

import math
from typing import Any

from sweeps.core.keys import COMPLETED, DIVERGED, FAILED, INTERRUPTED, OOM
from sweeps.core.records import UNSTABLE_SHARE, SweepState, TrialRecord, metric_text
from sweeps.results.report import result_rows, terminal_table
from sweeps.spec.params import ParamSpec, is_number


def summary_table(state: SweepState) -> str:
    """A plain-text table of every trial: number, status, metric, epochs, sampled values, reason."""
    rows = result_rows(state)
    records = sorted(state.trials.values(), key=lambda r: (r.number, r.rescue_of is not None))
    sampled = list(dict.fromkeys(name for r in records for name in r.sampled))
    return terminal_table(rows, state.metric, sampled)


def time_ran_out(state: SweepState, trials: int) -> str:
    """``budget.time ran out after 7 of 50 trials; 2 more cut short by it (interrupted)``, or '' if it did not.

    The end of ``sweeps run`` printed it, but the report, its page and ``sweeps list`` did not: a
    user reading the record the next morning could not tell a time limit from a short budget. A
    trial asked for ahead of a free slot and never started is counted apart (it was not cut short).
    When the searcher stopped asking before the deadline (no trial could have ended an epoch in the
    time left), the line says so too, even if every trial had ended by the deadline.
    """
    left = state.stopped_asking_left_s
    if not state.out_of_time() or state.budget_done >= trials:
        return ""
    ended = [r for r in state.trials.values() if r.status == INTERRUPTED]
    waiting = sum(1 for r in ended if r.never_started)
    cut = len(ended) - waiting
    also = [f"{cut} more cut short by it (interrupted)"] if cut else []
    also += [f"{waiting} asked for and never started"] if waiting else []
    if left is not None and (fastest := state.fastest_first_epoch_s) is not None:
        need = f"less than the fastest trial needed to end its first epoch ({_seconds(fastest, up=True)})"
        also += [f"none started in its last {_seconds(left)}, {need}"]
    return f"budget.time ran out after {state.budget_done} of {trials} trials" + "".join(f"; {a}" for a in also)


def _seconds(seconds: float, up: bool = False) -> str:
    """A span of time as a person reads it: ``4.2 s``, ``38 s``, ``12 min``, ``1.5 h``; rounded down (``up``: up).

    So that a span shorter than another never reads as long as it (2.46 s against 2.5 s).
    """
    unit, size, step = ("s", 1.0, 0.1) if seconds < 10 else ("s", 1.0, 1.0) if seconds < 100 else ("min", 60.0, 1.0)
    if seconds >= 6000:
        unit, size, step = "h", 3600.0, 0.1
    steps = (math.ceil if up else math.floor)(round(seconds / size / step, 6))
    return f"{steps * step:.{1 if step < 1 else 0}f} {unit}"


def stopped_by_user(state: SweepState, trials: int) -> str:
    """``by Ctrl-C after 7 of 200 trials``: a sweep stopped before its end (its report said nothing of it)."""
    return f"by Ctrl-C after {state.budget_done} of {trials} trials"


def unstable_best_note(state: SweepState) -> str:
    """A line when the sweep's best trial overflowed on many of its steps ('' otherwise).

    A user's GAN whose generator never learned (every gradient 0 or inf, 75% of its steps
    skipped) ended as its sweep's best, unremarked: no signal's thresholds were met in 12 steps.
    """
    best = state.best
    if best is None or not best.unstable:
        return ""
    return (
        f"note:    the best, {best.label}, had a loss-scale overflow (an update skipped) on {best.skipped_share:.0%} "
        f"of its training steps ({best.skipped_steps} of {best.steps}); sweeps export --skip-unstable passes over "
        f"trials above {UNSTABLE_SHARE:.0%}"
    )


EDGE = 0.05
"""A best value this close to an end of its range (a share of the range, on its log scale if log) gets a note."""


def every_trial_failed(state: SweepState) -> str:
    """What ended every trial of a sweep that found nothing because all of them failed ('' otherwise).

    A trainer that cannot start (a data folder that is not there) fails each trial the same way,
    and a sweep that exited 0 then looked like a success to the script that ran it overnight.
    """
    records = sorted(state.trials.values(), key=lambda r: r.label)
    if not records or any(r.status not in (FAILED, OOM) for r in records):
        return ""
    return f"all {len(records)} trials failed ({records[0].label}: {records[0].reason})"


def range_edge_notes(params: dict[str, ParamSpec], best: dict[str, Any]) -> list[str]:
    """A line for each searched range whose best value sits at one of its ends: the best may lie beyond it.

    A user's best ``lr_g`` was 0.000984 in 1e-4..1e-3, and nothing said the range cut it off.
    """
    notes = []
    for name, param in params.items():
        value = best.get(name)
        if param.kind not in ("float", "int") or not is_number(value):
            continue
        low, high = float(param.low or 0.0), float(param.high or 0.0)
        if param.log and low > 0 and value > 0:
            where = (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
        else:
            where = (value - low) / (high - low)
        end = "top" if where >= 1 - EDGE else "bottom" if where <= EDGE else ""
        if end:
            beyond = "above" if end == "top" else "below"
            notes.append(
                f"note:    the best {name}, {value:.4g}, is at the {end} of its range ({param.low:g}..{param.high:g}): "
                f"the best may lie {beyond} it; widen the range to see"
            )
    return notes


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
        stuck = ", its output still collapsed at its end" if r.collapsed_at_end else ""
        if r.later_stop:  # the first flag may recover; this one no later step undoes
            stuck += f"; later {r.later_stop.split(':', 1)[0]}, which no later step undoes"
        lines.append(f"  {r.label} {r.would_stop}{_flag_context(state, r)} -> {end}{rank}{stuck}")
    return lines


def _flag_context(state: SweepState, record: TrialRecord) -> str:
    """`` (epoch 2: val_mse=0.062, then better by 0.0159 (26%))``: whether the trial recovered after its would-be stop.

    The rank alone can mislead: a loop whose failed trials still complete (a collapsed model
    scoring the mean image) ranks a recovered trial among them.
    """
    if record.flagged_at is None:
        return ""
    epoch, at_flag = record.flagged_at
    text = f" (epoch {epoch}: {state.metric}={metric_text(at_flag)}"
    if record.value is not None and record.epochs > epoch and at_flag != 0:
        change = abs(record.value - at_flag) / abs(at_flag)
        word = "better" if state.better(record.value, at_flag) else "worse"
        by = metric_text(abs(record.value - at_flag))  # the change itself too: a percentage of decibels says little
        text += f", then {word} by {by} ({change:.0%})" if change >= 0.01 else ", then within 1%"
    return text + ")"
