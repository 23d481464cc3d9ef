"""``sweeps audit``: re-run the trials a heuristic divergence signal stopped, to their last epoch, and judge each stop.

A stop is a claim: "this trial would not have ended among the good ones". The audit checks it.
Every trial of the sweep that a *heuristic* signal stopped (``loss_explosion``,
``grad_explosion``, ``collapse``, ``runaway_weights``), or ``loss_scale`` for a run or share of
overflow steps (:func:`sweeps.divergence.may_recover`; the irrecoverable ones, non-finite weights
and a loss scale below its floor, are not re-run) is trained again with the same parameters and seed to
the sweep's last epoch, with the detector observing only, on the sweep's Ray cluster. Each re-run is an
MLflow run under the sweep's parent (``sweep.role=audit``), linked both ways to the trial it
re-runs.

Verdicts, against the sweep's completed trials:

- ``false_stop``: the re-run ended with a finite metric at least as good as the median completed
  trial (it would have ended among the good ones);
- ``true_stop``: it ended non-finite, failed, or worse than that median, or its output was still
  collapsed when its training ended (a constant output ranks wherever the metric puts it);
- ``unjudged``: it ended with a finite metric, but no trial of the sweep completed to compare it with.

In an observe-mode sweep (``divergence.mode: observe``) the flagged trials trained on to their
end already: each would-be stop of a heuristic signal whose trial completed (or ended with no
finite metric) is judged from the trial's own end, with nothing re-run, against the completed
trials no signal flagged: those a sweep that stopped would have completed (with the flagged ones
in the pool, the same trial read ``false_stop`` observed and ``true_stop`` stopped).

The audit also says where each re-run would have ranked and whether the sweep's best (or top
``k``) would have changed. The stopped trial's run gets ``sweep.audit.verdict``,
``sweep.audit.metric`` and ``sweep.audit.run_id``; the parent run gets the table as
``audit/audit_<n>.txt`` and counts as tags; the sweep's report folder keeps ``audit.txt``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.compat.ray_internals import TuneSigint
from sweeps.core.failures import failure_reason
from sweeps.core.keys import (
    AUDIT_FALSE_STOP,
    AUDIT_TRUE_STOP,
    AUDIT_UNJUDGED,
    COLLAPSED_AT_END_KEY,
    COMPLETED,
    DIVERGED,
    DIVERGED_KEY,
    ENGINE_KEY,
    EPOCH,
    FAILED,
    FAILED_KEY,
    INTERRUPTED,
    REASON_KEY,
    ROLE_RESCUE,
    ROLE_TRIAL,
    RUNNING,
    TAG_AUDIT_BEST_CHANGED,
    TAG_AUDIT_FALSE_STOPS,
    TAG_AUDIT_METRIC,
    TAG_AUDIT_RUN,
    TAG_AUDIT_STOPS,
    TAG_AUDIT_VERDICT,
    TAG_COLLAPSED_AT_END,
    TAG_DIVERGENCE_STEP,
    TAG_EPOCHS,
    TAG_OPTUNA_NUMBER,
    TAG_REASON,
    TAG_RESCUE_OF,
    TAG_ROLE,
    TAG_SIGNAL,
    TAG_STATUS,
    TAG_WOULD_STOP_LATER,
    TAG_WOULD_STOP_REASON,
    TAG_WOULD_STOP_SIGNAL,
    TAG_WOULD_STOP_STEP,
    TIME_UP_KEY,
)
from sweeps.core.outcome import ran_out
from sweeps.core.records import SweepState, metric_text, trial_label
from sweeps.divergence import may_recover
from sweeps.engine.cluster import start_ray
from sweeps.engine.runner import configs_tuner
from sweeps.engine.searcher import trial_plan
from sweeps.results.report import clipped, read_results, write_page
from sweeps.spec.sweep_spec import SweepSpec, load_spec
from sweeps.store.study import load_study
from sweeps.store.sweep_dir import SweepDir, SweepStoreError, open_sweep_dir
from sweeps.tracking.sweep_tracker import SweepTracker
from sweeps.trial.one_worker import run_trial

END_WIDTH = 38
"""Characters of the audit table's "re-run to the last epoch" column (``ran on: val_mse=0.085265, collapsed``)."""


@dataclass
class AuditedStop:
    """One stopped trial and what its re-run to the last epoch showed."""

    label: str
    number: int
    run_id: str
    signal: str
    step: str
    stopped_value: float | None
    audit_run_id: str = ""
    value: float | None = None
    epochs: int = 0
    failure: str = ""
    rank: int | None = None
    """Where the re-run would have ranked among the completed trials (1 = best)."""
    verdict: str = ""
    collapsed: str = ""
    """Why its output was still collapsed when training ended ('' when it moved again): the stop's claim held."""
    later: str = ""
    """Observe mode: a later signal no step undoes (``signal@step: reason``): the flag was right."""
    observed: bool = False
    """A would-be stop of observe mode: the trial itself ran on to its end, nothing was re-run."""

    def line(self, metric: str, completed: int) -> str:
        """One line of the audit table."""
        end = f"{metric}={metric_text(self.value)}" if self.value is not None else (self.failure or "no finite metric")
        if self.collapsed:
            end = f"{end}, collapsed"
        elif self.later:
            end = f"{end}, then {self.later.split('@', 1)[0]}"
        end = clipped(("ran on: " if self.observed else "") + end, END_WIDTH)  # the whole reason is on the MLflow run
        among = completed + 1  # where it would have ranked had it joined them
        rank = f"rank {self.rank} of {among}" if self.rank is not None else "-"
        by = self.signal + "@" + self.step + (" (observe)" if self.observed else "")
        return f"{self.label:<6} {by:<32} {end:<{END_WIDTH}} {rank:<14} {self.verdict}"


class AuditInterrupted(Exception):
    """Ctrl-C during an audit: its re-runs did not all end, so no verdict is recorded."""


@dataclass
class AuditResult:
    """Every audited stop, the sweep's completed values, and the verdicts' summary."""

    sweep: str
    metric: str
    mode: str
    stops: list[AuditedStop]
    completed: list[float]
    top_k: int
    page: Path | None = None
    """The sweep's ``report.html``, rewritten with the verdicts (None when there was nothing to re-run or no report)."""
    unflagged: list[float] = field(default_factory=list)
    """The completed trials no signal flagged (observe mode): the pool a would-be stop is judged against."""
    irrecoverable: list[str] = field(default_factory=list)
    """Stops (or flags) no audit re-runs, as ``t006 loss_scale@4``: no later step could have undone them."""

    def not_rerun(self) -> str:
        """A line naming the irrecoverable stops left out ('' when there were none).

        A user's audit of an observe sweep said only "no trial was stopped (or, observed, flagged)" of
        a sweep with one trial flagged by ``loss_scale`` (its loss not finite under loss scaling).
        """
        if not self.irrecoverable:
            return ""
        return f"not re-run (no later step undoes them): {', '.join(self.irrecoverable)}"

    @property
    def false_stops(self) -> list[AuditedStop]:
        """The stops whose re-run would have ended among the good ones."""
        return [s for s in self.stops if s.verdict == AUDIT_FALSE_STOP]

    @property
    def best_changed(self) -> list[AuditedStop]:
        """Re-runs that would have entered the sweep's top ``k`` (with ``k=1``: beaten its best).

        A would-be stop of observe mode ran on, so the sweep's best counts it already: it is listed
        when stopping it would have changed the top ``k``, its value better than the ``k``-th best of
        the trials no signal flagged (a user's flagged trial was the sweep's best, and the audit said "no").
        """
        return [s for s in self.stops if s.rank is not None and s.rank <= self.top_k and self._leads(s)]

    def _leads(self, stop: AuditedStop) -> bool:
        """Among the top ``k`` had none of the stops been made, strictly ahead of its pool's ``k``-th best.

        A re-run is judged against the completed trials; an observed flag against the unflagged ones
        (a user's all-zero collapses re-ran to exactly the value of two completed all-zero trials,
        and the audit said the best would have changed): a tie changes no value in the top ``k``.
        The other stops' ends count too: a user's sweep with no completed trial had three re-runs
        named as changing its best (``--top-k 1``), two of them near the untrained model.
        """
        sign = 1.0 if self.mode == "min" else -1.0
        ends = {  # a finite end, and not a re-run still collapsed at its end: stopped or not, that would not rank
            s.label: sign * s.value
            for s in self.stops
            if s.value is not None and s.observed == stop.observed and not (s.collapsed and not s.observed)
        }
        if stop.label not in ends:
            return False
        pool = [(sign * v, 0, "") for v in (self.unflagged if stop.observed else self.completed)]
        top = sorted(pool + [(v, 1, label) for label, v in ends.items()])[: self.top_k]  # a tie: the pool's first
        return (ends[stop.label], 1, stop.label) in top

    def text(self) -> str:
        """The audit as a table and a closing line."""
        head = f"{'trial':<6} {'stopped by':<32} {'re-run to the last epoch':<{END_WIDTH}} {'rank':<14} verdict"
        lines = [head, "-" * len(head)]
        lines += [s.line(self.metric, len(self.unflagged if s.observed else self.completed)) for s in self.stops]
        return "\n".join([*lines, "", self.summary(), *([self.not_rerun()] if self.irrecoverable else [])])

    def summary(self) -> str:
        """One line: how many stops were re-run, how many were wrong, and whether the best changed."""
        changed = ", ".join(s.label for s in self.best_changed) or "no"
        what = "best" if self.top_k == 1 else f"top {self.top_k}"
        observed = sum(s.observed for s in self.stops)
        judged = f"{len(self.stops) - observed} heuristic stop(s) re-run"
        if observed:
            judged += f", {observed} would-be stop(s) judged from the trial's own end"
        false = len(self.false_stops)
        had = " had they been stopped" if self.stops and all(s.observed for s in self.stops) else ""
        return f"audit of {self.sweep}: {judged}, {false} false; the sweep's {what} would have changed{had}: {changed}"


def audit_sweep(
    root: str | Path,
    name: str,
    top_k: int = 1,
    address: str | None = None,
    cpus: int | None = None,
) -> AuditResult:
    """Re-run the sweep's heuristic stops to the last epoch and record the verdicts (see the module docstring)."""
    sweep = open_sweep_dir(root, name)
    meta = sweep.read_meta()
    if meta.get("status") == RUNNING:
        raise SweepStoreError(f"sweep {sweep.name!r} is still running (or its driver died: resume it first)")
    spec = load_spec(sweep.spec_file)
    tracker = SweepTracker.of_sweep(meta)
    runs = tracker.trial_runs()
    stops, configs = _stopped_trials(sweep, spec, runs)
    observed = _observed_trials(runs, spec)
    completed = _completed_values(runs, spec.metric)
    by_number = sorted(stops + observed, key=lambda s: s.number)
    result = AuditResult(sweep.name, spec.metric, spec.mode, by_number, completed, top_k)
    result.unflagged = _completed_values(runs, spec.metric, unflagged=True)
    result.irrecoverable = _irrecoverable(runs)
    number = int(meta.get("audits", 0)) + 1
    if stops:
        spec_text = sweep.spec_file.read_text()
        plans = []
        for stop, params in zip(stops, configs, strict=True):
            stop.audit_run_id = tracker.create_audit_run(sweep.name, stop.number, params, (stop.label, stop.run_id))
            plan = trial_plan(spec, tracker.uri, stop.audit_run_id, spec_text)
            # observing only: nothing stops the re-run, and a collapse still under way at its end is seen
            plan.divergence = {**plan.divergence, "enabled": True, "mode": "observe"}
            plan.report_epochs = []  # budget.trial_time holds, as in the sweep
            plans.append({**params, ENGINE_KEY: plan.as_config()})
        start_ray(num_cpus=cpus, address=address)
        if unfinished := _rerun(spec, sweep, plans, stops, number):
            for stop in stops:
                why = "the audit was stopped before this re-run ended: nothing judged"
                tracker.finish_run(stop.audit_run_id, INTERRUPTED, why, {TAG_EPOCHS: str(stop.epochs)})
            raise AuditInterrupted(
                f"audit of {sweep.name} stopped before {len(unfinished)} re-run(s) ended: no verdict recorded"
            )
    if result.stops:
        _judge(result)
        _record(result, tracker, sweep, number)
        sweep.write_meta({**meta, "audits": number})
    return result


def audit_trial(config: dict[str, Any]) -> None:
    """Ray's trainable for an audit: one stopped trial's config, run to its last epoch."""
    run_trial(config["trial"])


def _stopped_trials(sweep: SweepDir, spec: SweepSpec, runs: list[Any]) -> tuple[list[AuditedStop], list[dict]]:
    """The trials a heuristic signal stopped, with the parameters they ran with (from the Optuna study).

    A precision rescue (``t003r``) too: its trial's parameters at the precision it ran (a user's bf16
    rescue stopped by ``loss_explosion`` was neither re-run nor named).
    """
    study = load_study(sweep)
    config_of = {str(t.user_attrs.get("mlflow_run_id")): dict(t.user_attrs.get("config") or {}) for t in study.trials}
    stops, configs = [], []
    for run in _trial_runs(runs):
        tags = run.data.tags
        rescue = tags.get(TAG_ROLE) == ROLE_RESCUE
        if tags.get(TAG_STATUS) != DIVERGED:
            continue
        origin = tags.get(TAG_RESCUE_OF, "") if rescue else run.info.run_id
        if not may_recover(tags.get(TAG_SIGNAL, ""), tags.get(TAG_REASON, "")) or origin not in config_of:
            continue
        if tags.get(TAG_WOULD_STOP_SIGNAL):  # observe mode: it ran on to its end, judged as it ended
            continue
        number = _number(run)
        stopped = run.data.metrics.get(spec.metric)
        config = config_of[origin]
        if rescue:
            config = {**config, "precision": run.data.params.get("precision", config.get("precision"))}
        stops.append(
            AuditedStop(
                _label(run),
                number,
                run.info.run_id,
                tags[TAG_SIGNAL],
                tags.get(TAG_DIVERGENCE_STEP, "?"),
                stopped if stopped is not None and math.isfinite(stopped) else None,
            )
        )
        configs.append(config)
    return stops, configs


def _trial_runs(runs: list[Any]) -> list[Any]:
    """The runs of the trials and of their precision rescues, by trial, each rescue after its trial."""
    trials = [run for run in runs if run.data.tags.get(TAG_ROLE) in (ROLE_TRIAL, ROLE_RESCUE)]
    return sorted(trials, key=lambda r: (_number(r), r.data.tags.get(TAG_ROLE) == ROLE_RESCUE))


def _number(run: Any) -> int:
    """A trial run's Optuna number (a rescue's: its trial's)."""
    return int(run.data.tags.get(TAG_OPTUNA_NUMBER, 0))


def _label(run: Any) -> str:
    """``t003``, or ``t003r`` for the precision rescue of t003."""
    return trial_label(_number(run), run.data.tags.get(TAG_ROLE) == ROLE_RESCUE)


def _irrecoverable(runs: list[Any]) -> list[str]:
    """``t006 loss_scale@4`` for each trial stopped (or, observed, flagged) by a signal no later step undoes."""
    found = []
    for run in _trial_runs(runs):
        tags = run.data.tags
        signal, reason, step = tags.get(TAG_WOULD_STOP_SIGNAL), tags.get(TAG_WOULD_STOP_REASON, ""), TAG_WOULD_STOP_STEP
        if not signal and tags.get(TAG_STATUS) == DIVERGED:
            signal, reason, step = tags.get(TAG_SIGNAL), tags.get(TAG_REASON, ""), TAG_DIVERGENCE_STEP
        if signal and not may_recover(signal, reason):
            found.append(f"{_label(run)} {signal}@{tags.get(step, '?')}")
    return found


def _observed_trials(runs: list[Any], spec: SweepSpec) -> list[AuditedStop]:
    """Observe mode: the trials a heuristic signal would have stopped that then ran to their end.

    A completed one is judged by its own final metric; one that ended with none (``diverged``,
    observed, not stopped) is a right flag. Flagged trials ASHA cut or that failed are not judged.
    """
    found = []
    for run in runs:
        tags = run.data.tags
        signal, reason = tags.get(TAG_WOULD_STOP_SIGNAL, ""), tags.get(TAG_WOULD_STOP_REASON, "")
        if tags.get(TAG_ROLE) != ROLE_TRIAL or not may_recover(signal, reason):
            continue
        status, value = tags.get(TAG_STATUS), run.data.metrics.get(spec.metric)
        finite = value is not None and math.isfinite(value)
        if status not in (COMPLETED, DIVERGED) or (status == COMPLETED and not finite):
            continue
        number = int(tags.get(TAG_OPTUNA_NUMBER, 0))
        stop = AuditedStop(
            trial_label(number),
            number,
            run.info.run_id,
            tags[TAG_WOULD_STOP_SIGNAL],
            tags.get(TAG_WOULD_STOP_STEP, "?"),
            None,
            epochs=int(tags.get(TAG_EPOCHS) or 0),
            collapsed=tags.get(TAG_COLLAPSED_AT_END, ""),
            later=tags.get(TAG_WOULD_STOP_LATER, ""),
            observed=True,
        )
        if status == COMPLETED:
            stop.value = float(value)
        else:
            stop.failure = f"no finite {spec.metric} at the end"
        found.append(stop)
    return found


def _completed_values(runs: list[Any], metric: str, unflagged: bool = False) -> list[float]:
    """The metric of every completed trial (``unflagged``: of those with no would-be stop of observe mode)."""
    values = []
    for run in runs:
        value = run.data.metrics.get(metric)
        if (
            run.data.tags.get(TAG_ROLE) == ROLE_TRIAL
            and run.data.tags.get(TAG_STATUS) == COMPLETED
            and value is not None
            and not (unflagged and run.data.tags.get(TAG_WOULD_STOP_SIGNAL))
        ):
            values.append(float(value))
    return values


def _rerun(
    spec: SweepSpec, sweep: SweepDir, plans: list[dict[str, Any]], stops: list[AuditedStop], number: int
) -> list[AuditedStop]:
    """Train every plan to its last epoch on Ray (trials at once as the sweep ran them); fill in the results.

    Returns the re-runs Tune stopped before their end (Ctrl-C): nothing can be judged from them.
    """
    if spec.budget.workers_per_trial > 1:
        raise SweepStoreError("audit of multi-worker sweeps is not supported yet: re-run the stopped configs alone")
    state = SweepState(spec.metric, spec.mode)
    tuner = configs_tuner(spec, sweep, audit_trial, plans, f"audit_{number}", state)
    by_run = {stop.audit_run_id: stop for stop in stops}
    sigint = TuneSigint()
    try:
        results = tuner.fit()
    finally:
        sigint.restore()  # Tune's handler, unfired, would swallow a Ctrl-C while the verdicts are written
    unfinished = []
    for result in (results[i] for i in range(len(results))):
        run_id = (result.config or {})["trial"][ENGINE_KEY]["run_id"]
        stop, metrics = by_run[run_id], result.metrics or {}
        stop.epochs = int(metrics.get(EPOCH, 0))
        stop.collapsed = str(metrics.get(COLLAPSED_AT_END_KEY) or "")
        if metrics.get(FAILED_KEY) or result.error is not None:
            stop.failure = str(metrics.get(REASON_KEY, "")) or _error_reason(result.error, state)
            continue
        if metrics.get(TIME_UP_KEY):  # cut as the sweep would have cut it: it could not have been its best
            stop.failure = ran_out("budget.trial_time", stop.epochs, spec.budget.epochs)
            continue
        value = metrics.get(spec.metric)
        if isinstance(value, (int, float)) and math.isfinite(value) and stop.epochs >= spec.budget.epochs:
            stop.value = float(value)
        elif stop.epochs < spec.budget.epochs and not metrics.get(DIVERGED_KEY):
            unfinished.append(stop)  # Tune stopped it: Ctrl-C
    return unfinished


def _error_reason(error: BaseException | None, state: SweepState) -> str:
    """A re-run's failure: ``budget.trial_time``'s reason for a process it ended, else the error's line."""
    if error is None:
        return "failed"
    if state.timed_out and "ray.kill" in str(error):  # every timed-out trial has the same reason
        return next(iter(state.timed_out.values()))
    return failure_reason(error)


def _judge(result: AuditResult) -> None:
    """Rank each re-run among the completed trials and give its verdict."""
    sign = 1.0 if result.mode == "min" else -1.0
    for stop in result.stops:
        if stop.value is None:
            stop.verdict = AUDIT_TRUE_STOP
            continue
        score = sign * stop.value
        ranked = sorted(sign * v for v in (result.unflagged if stop.observed else result.completed))
        stop.rank = 1 + sum(1 for v in ranked if v < score)
        if stop.collapsed or stop.later:  # its output stuck at the end, or damage no step undoes: the flag was right
            stop.verdict = AUDIT_TRUE_STOP
            continue
        if not ranked:  # no completed trial: "at least as good as the median" says nothing (it read false_stop)
            stop.verdict = AUDIT_UNJUDGED
            continue
        median = ranked[(len(ranked) - 1) // 2]
        stop.verdict = AUDIT_FALSE_STOP if score <= median else AUDIT_TRUE_STOP


def _record(result: AuditResult, tracker: SweepTracker, sweep: SweepDir, number: int) -> None:
    """Close the audit runs; tag the stopped trials and the parent; keep the table beside the report."""
    for stop in result.stops:
        if not stop.observed:  # the re-run's own run
            status = COMPLETED if stop.value is not None else (FAILED if stop.failure else DIVERGED)
            reason = stop.failure or ("" if stop.value is not None else f"no finite {result.metric} at the last epoch")
            tracker.finish_run(stop.audit_run_id, status, reason, {TAG_EPOCHS: str(stop.epochs)})
        tags = {TAG_AUDIT_VERDICT: stop.verdict, TAG_AUDIT_RUN: stop.audit_run_id}
        if stop.value is not None:
            tags[TAG_AUDIT_METRIC] = f"{stop.value:.6g}"
        tracker.set_tags(stop.run_id, tags)
    text = result.text() + "\n"
    tracker.log_text(tracker.parent_run_id, text, f"audit/audit_{number}.txt")
    counts = {TAG_AUDIT_STOPS: str(len(result.stops)), TAG_AUDIT_FALSE_STOPS: str(len(result.false_stops))}
    tracker.set_tags(tracker.parent_run_id, {**counts, TAG_AUDIT_BEST_CHANGED: str(bool(result.best_changed))})
    folder = sweep.path / "report"
    folder.mkdir(exist_ok=True)
    (folder / "audit.txt").write_text(text)
    rows = read_results(folder)
    if rows:  # the page's stop decisions get the verdicts now, not at the next `sweeps report`
        _, result.page = write_page(sweep.name, sweep.read_meta(), folder, rows)
