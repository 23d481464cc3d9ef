"""A Ray Tune searcher driven by an Optuna study kept on disk.

Each suggestion is an Optuna ``ask`` with the spec's (conditional) space sampled
define-by-run; each epoch's metric is reported as an intermediate value; each ending is
told back: completed trials as COMPLETE, trials ASHA cut as PRUNED, errors as FAIL, and
diverged trials as COMPLETE but *infeasible* (an Optuna constraint > 0), which TPE ranks below
every feasible trial, so the search moves away from where divergence lives.

With ``divergence.rescue`` on, a trial that diverged by loss-scale collapse under fp16 or
fp16-o2 is run once more with the same parameters at bf16 (fp32 where bf16 cannot run); the
rescue is an extra Ray trial with its own MLflow run, linked to the first, outside the study.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState
from ray.tune.search import Searcher

from sweeps.core.failures import ends_the_sweep
from sweeps.core.keys import (
    COMPLETED,
    DIVERGED,
    ENGINE_KEY,
    EPOCH,
    FAILED,
    HISTORY_KEY,
    INTERRUPTED,
    NOT_STARTED_KEY,
    RUNNING,
    SKIPPED_KEY,
    STEPS_KEY,
    TAG_WARM_START_TRIAL,
)
from sweeps.core.outcome import (
    NOT_STARTED,
    TELL_COMPLETE,
    TELL_INFEASIBLE,
    TELL_PRUNED,
    Ending,
    Outcome,
    decide_outcome,
    final_result,
    fresh_intermediate_values,
    ran_out,
    study_verdict,
    wants_rescue,
)
from sweeps.core.plan import TrialPlan
from sweeps.core.records import SweepState, TrialRecord
from sweeps.engine.scheduler import rung_epochs
from sweeps.spec.params import sample
from sweeps.spec.sweep_spec import SweepSpec
from sweeps.store.cost_aware_sampler import COST_ATTR, CostAwareTPESampler
from sweeps.store.interleaved_sampler import RandomInterleavedSampler
from sweeps.store.study import QUEUED_ATTR, drawn_by, record_trial
from sweeps.tracking.sweep_tracker import SweepTracker
from trainables.precision import canonical_precision, precision_problem
from trainables.runtime import pick_device


def trial_plan(spec: SweepSpec, tracking_uri: str, run_id: str, spec_text: str) -> TrialPlan:
    """The plan a trial of ``spec`` gets: trainer, metric, epochs, resources, report cadence, detector."""
    budget = spec.budget
    return TrialPlan(
        trainer=spec.trainer,
        metric=spec.metric,
        epochs=budget.epochs,
        tracking_uri=tracking_uri,
        run_id=run_id,
        threads=max(1, int(budget.cpus_per_trial)),
        workers=budget.workers_per_trial,
        cpus=budget.cpus_per_trial,
        gpus=budget.gpus_per_trial,
        spec_text=spec_text,
        report_epochs=rung_epochs(spec),
        report_every_s=spec.record.report_every_s,
        step_every_s=spec.record.step_every_s,
        trial_time_s=budget.trial_time_s or 0.0,
        divergence={
            "enabled": spec.divergence.enabled,
            "signals": spec.divergence.signals,
            "rescue": spec.divergence.rescue,
            "mode": spec.divergence.mode,
        },
    )


def rescue_precision(params: dict[str, Any], supported: tuple[str, ...] | None = None) -> str | None:
    """bf16 where the trainer and the trial's device run it, else fp32 where the trainer runs it, else None.

    ``supported``: the precisions the trainer runs (None: any; the spec refuses a rescue of a
    trainer that does not say).
    """
    device = pick_device(str(params.get("device", "auto")))
    runs = supported if supported is not None else ("fp32", "bf16")
    if "bf16" in runs and precision_problem("bf16", device) is None:
        return "bf16"
    return "fp32" if "fp32" in runs else None


class OptunaSearcher(Searcher):
    """Suggests configs from ``study`` and tells it how each trial ended."""

    def __init__(
        self, spec: SweepSpec, study: optuna.Study, state: SweepState, tracker: SweepTracker, sweep: str
    ) -> None:
        super().__init__(metric=spec.metric, mode=spec.mode)
        self.spec, self.study, self.state, self.tracker, self.sweep = spec, study, state, tracker, sweep
        self.live: dict[str, optuna.Trial] = {}
        self.reported: dict[str, int] = {}
        self.last_results: dict[str, dict[str, Any]] = {}
        """Each running trial's last result: a final one whose ending Tune never passed on still ends it so."""
        self.asked = 0
        self.rescues: deque[TrialRecord] = deque()
        self.spec_text = yaml.safe_dump(spec.raw, sort_keys=False)
        self.must_restore = False  # set by ``sweeps.resume``: Ray has to restore its experiment first
        self.restored = False
        self.hook_sampler()

    def hook_sampler(self) -> None:
        """Let the study's cost-aware TPE read the budget's share spent (again at each ask: resume swaps samplers)."""
        sampler = self.study.sampler
        sampler = sampler.base if isinstance(sampler, RandomInterleavedSampler) else sampler
        if isinstance(sampler, CostAwareTPESampler):
            sampler.budget_used = self.budget_used

    def budget_used(self) -> float:
        """The share of the budget spent, 0 to 1: the larger of ``budget.time`` gone and ``budget.trials`` asked.

        1 (all of it) in a sweep without ``budget.time``: its trials are its budget, whatever they
        cost, so the search weighs no cost (``search.cost_aware`` acts where time is the limit).
        """
        budget = self.spec.budget
        if not budget.time_s:
            return 1.0
        used = self.asked / budget.trials if budget.trials else 0.0
        if self.state.deadline is not None:
            used = max(used, 1.0 - (self.state.deadline - time.time()) / budget.time_s)
        return min(1.0, max(0.0, used))

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any) -> bool:
        """Accept Tune's metric and mode (the spec's own)."""
        return True

    def save(self, checkpoint_path: str) -> None:
        """Ray's snapshot of the searcher: a marker only; the study and MLflow hold the real state."""
        with open(checkpoint_path, "w") as f:
            f.write(f"{self.sweep}: {self.asked} asked\n")

    def restore(self, checkpoint_path: str) -> None:
        """Ray restored the experiment; the state was rebuilt from the study and MLflow (``sweeps.resume``)."""
        self.restored = True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """Ask Optuna for a point (or take a queued rescue), open its MLflow run, return the config."""
        if self.must_restore and not self.restored:
            # Ray starts afresh when it cannot restore; never run the sweep's trials twice.
            raise RuntimeError("Ray could not restore the sweep's experiment state; nothing was run")
        # nothing more is asked (``sweeps.engine.sweep_stop``); nor when a trial could not end an epoch in time
        if self.state.halted or self.state.time_up() or self.state.no_time_to_start():
            return Searcher.FINISHED  # type: ignore[return-value]
        if self.rescues:
            return self._suggest_rescue(trial_id, self.rescues.popleft())
        if self.asked >= self.spec.budget.trials:
            waiting = self.spec.divergence.rescue and any(r.status == RUNNING for r in self.state.trials.values())
            return None if waiting else Searcher.FINISHED  # type: ignore[return-value]
        self.asked += 1
        started = time.perf_counter()
        self.hook_sampler()
        trial = self.study.ask()
        sampled = sample(trial, self.spec.params, self.spec.fixed)
        params = self.spec.resolve(sampled)
        sampling = time.perf_counter() - started
        drawn = drawn_by(self.study, trial, self.spec)
        # a warm start's re-run of an earlier best: which trial it repeats, on its run (it was in Optuna only)
        repeats = {TAG_WARM_START_TRIAL: str(trial.user_attrs[QUEUED_ATTR])} if QUEUED_ATTR in trial.user_attrs else {}
        run_id = self.tracker.create_trial_run(
            self.sweep, trial.number, trial_id, params, sampled, drawn_by=drawn, also=repeats
        )
        record_trial(trial, attrs={"ray_trial_id": trial_id, "mlflow_run_id": run_id, "config": params})
        self.live[trial_id] = trial
        record = TrialRecord(trial.number, trial_id, run_id, params, sampled, sampling_s=sampling, drawn_by=drawn)
        self.state.trials[trial_id] = record
        return self._config(params, run_id, record.label)

    def _suggest_rescue(self, trial_id: str, original: TrialRecord) -> dict[str, Any]:
        precision = rescue_precision(original.params, self.spec.trainer_precisions) or "fp32"
        params = {**original.params, "precision": precision}
        sampled = {**original.sampled, "precision": precision}
        run_id = self.tracker.create_trial_run(
            self.sweep,
            original.number,
            trial_id,
            params,
            sampled,
            rescue_of=(original.label, original.run_id),
        )
        record = TrialRecord(original.number, trial_id, run_id, params, sampled, rescue_of=original)
        original.rescue = record
        self.state.trials[trial_id] = record
        return self._config(params, run_id, record.label)

    def _config(self, params: dict[str, Any], run_id: str, label: str) -> dict[str, Any]:
        return {**params, ENGINE_KEY: self.plan(run_id, label).as_config()}

    def plan(self, run_id: str, label: str = "") -> TrialPlan:
        """The plan every trial of this sweep gets, for the trial whose MLflow run is ``run_id`` (named ``label``)."""
        plan = trial_plan(self.spec, self.tracker.uri, run_id, self.spec_text)
        plan.deadline, plan.start_by, plan.label = self.state.deadline or 0.0, self.state.start_by() or 0.0, label
        return plan

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Record the epoch and report the metric to Optuna as an intermediate value.

        A failure's report holds no metric of its own, but the epochs the trial validated since its
        previous report (its history): they are recorded as any report's are.
        """
        record = self.state.trials.get(trial_id)
        if record is not None:
            self.last_results[trial_id] = result
            self.state.observe(record, result)
            self._report(trial_id, record, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Tell Optuna how the trial ended and record it in the sweep state."""
        record = self.state.trials.get(trial_id)
        self.last_results.pop(trial_id, None)
        if record is None or record.status != RUNNING:
            return
        self.state.observe(record, result)
        self._report(trial_id, record, result)
        if error:
            self._recover_logged(trial_id, record)
            self._recover_would_stop(record)
        ending = Ending(
            result,
            error=error,
            error_reason=self.state.errors.get(trial_id, ""),
            pruned=trial_id in self.state.pruned,
            epochs=record.epochs,
            value=record.value,
        )
        if (result or {}).get(NOT_STARTED_KEY):  # Tune began it after the deadline: counted with the never begun
            record.started = False
        outcome = decide_outcome(ending, self.spec.metric, self.spec.budget.epochs)
        if outcome.status == INTERRUPTED and self.state.time_up() and not record.never_started:  # at the deadline
            outcome = Outcome(INTERRUPTED, self._ran_out(record))
        if outcome.status == DIVERGED:
            record.signal, record.diverged_at = outcome.signal, outcome.step
        self.state.finish(record, outcome.status, outcome.reason)
        self._halt_if_every_trial_would_fail(record)
        trial = self.live.pop(trial_id, None)
        if trial is not None:
            self._tell(trial, record)
        self.rescue_if_wanted(record)

    def _halt_if_every_trial_would_fail(self, record: TrialRecord) -> None:
        """Stop the sweep (``state.halted``) on a broken contract (``sweeps.core.failures.SWEEP_ENDING_ERRORS``).

        Only those: other failures, even the same one in several trials, may belong to a region of
        the space (a kernel size the model cannot take), and the rest of the sweep goes on.
        """
        if not self.state.halted and record.status == FAILED and ends_the_sweep(record.reason):
            self.state.halted = f"{record.label} failed: {record.reason}"

    def rescue_if_wanted(self, record: TrialRecord) -> None:
        """Queue a precision rescue of ``record`` if the spec asks for one and the rules allow it."""
        try:
            precision = canonical_precision(str(record.params.get("precision", "fp32")))
        except ValueError:
            return
        enabled, is_rescue = self.spec.divergence.rescue, record.rescue_of is not None
        target = rescue_precision(record.params, self.spec.trainer_precisions)  # only one the trainer runs
        wanted = wants_rescue(record.status, record.signal, precision, enabled=enabled, is_rescue=is_rescue)
        if wanted and target is not None:
            self.rescues.append(record)

    def continue_trial(self, record: TrialRecord, trial: optuna.Trial, reported_epoch: int) -> None:
        """Resume: a trial still running in the study goes on, told of the epochs after ``reported_epoch``."""
        self.live[record.ray_id] = trial
        self.reported[record.ray_id] = reported_epoch

    def count_started(self, trials: int = 1) -> None:
        """Resume: ``trials`` trials already asked before count toward the budget."""
        self.asked += trials

    def end_open_trials(self, reason: str) -> list[TrialRecord]:
        """End every trial still running when Tune returned; return them (their MLflow runs are still open).

        Tune stopped the sweep (Ctrl-C, ``budget.time``, a halt) before it passed their endings on.
        A trial whose last result was final (its last epoch, a divergence, a failure), or whose
        MLflow run holds every epoch validated, ends as that says; the others are interrupted
        (Optuna FAIL with ``status=interrupted``), with ``reason``; one asked ahead that Tune never
        started says so (its 0-epoch run read as a trial cut short).
        """
        ended = []
        for trial_id, result in list(self.last_results.items()):
            if final_result(result, self.spec.budget.epochs) and trial_id in self.state.trials:
                self.on_trial_complete(trial_id, result)
                ended.append(self.state.trials[trial_id])
        open_records = [r for r in self.state.trials.values() if r.status == RUNNING]
        for record in open_records:
            logged = self._recover_logged(record.ray_id, record)
            self._recover_would_stop(record)
            trial = self.live.pop(record.ray_id, None)
            last = logged[-1] if logged else (0, math.nan)
            if last[0] >= self.spec.budget.epochs and math.isfinite(last[1]):
                self.state.finish(record, COMPLETED)  # it trained and validated its last epoch: only the report was cut
                if trial is not None:
                    self._tell(trial, record)
                continue
            if record.never_started:  # asked ahead of a slot that never freed (a logged epoch counts as begun)
                self.state.finish(record, INTERRUPTED, self._never_started())
            else:
                self.state.finish(record, INTERRUPTED, self._ran_out(record) if self.state.time_up() else reason)
            if trial is not None:
                trial.set_user_attr("status", INTERRUPTED)
                self.study.tell(trial, state=TrialState.FAIL)
        return ended + open_records

    def _never_started(self) -> str:
        """Why a trial asked for ahead of a free slot ended without Tune beginning it."""
        if self.state.time_up():
            return NOT_STARTED
        if self.state.out_of_time():
            return "not started: less of budget.time was left than any trial had needed to end its first epoch"
        return "the sweep stopped before it started (it waited for its process or a free slot)"

    def _ran_out(self, record: TrialRecord) -> str:
        return ran_out("budget.time", record.epochs, self.spec.budget.epochs)

    def _recover_would_stop(self, record: TrialRecord) -> None:
        """Observe mode: a trial that never reported its would-be stop (its process died) has it on its run."""
        if not self.spec.observing or record.would_stop or not record.run_id:
            return
        try:
            record.would_stop = self.tracker.would_stop(record.run_id)
        except Exception:  # noqa: BLE001 - the tag stays in MLflow; only the summary's line is missing
            return

    def end_lost(self, record: TrialRecord, trial: optuna.Trial, reason: str) -> str:
        """End a trial no driver will hear from again (``sweeps resume`` after its driver died); its status.

        The epochs its MLflow run holds past what the study was told are taken first (its process
        may have trained on after the driver died): ``completed`` when they reach its last epoch
        with a finite metric, else ``interrupted`` (Optuna FAIL) with ``reason``.
        """
        self.live[record.ray_id] = trial
        logged = self._recover_logged(record.ray_id, record)
        self.live.pop(record.ray_id, None)
        self.reported.pop(record.ray_id, None)
        last = logged[-1] if logged else (0, math.nan)
        if last[0] >= self.spec.budget.epochs and math.isfinite(last[1]):
            self.state.finish(record, COMPLETED)
            self._tell(trial, record)
            return COMPLETED
        self.state.finish(record, INTERRUPTED, reason)
        trial.set_user_attr("status", INTERRUPTED)
        trial.set_user_attr("reason", reason)
        self.study.tell(trial, state=TrialState.FAIL)
        return INTERRUPTED

    def _recover_logged(self, trial_id: str, record: TrialRecord) -> list[tuple[int, float]]:
        """Take the epochs the trial's MLflow run holds that no report brought: its process died, or was stopped.

        A trial reports to the driver at ASHA's rungs, its last epoch and every ``report_every_s``,
        but logs every epoch to MLflow as it ends; what it validated since its last report would
        otherwise be missing from the table, results.csv and Optuna. Returns every ``(epoch, value)``
        the run holds ([] when it cannot be read).
        """
        if not record.run_id:
            return []
        try:
            history = self.tracker.logged_history(record.run_id, self.spec.metric)
        except Exception:  # noqa: BLE001 - a store that cannot be read now loses no record: MLflow keeps it
            return []
        newer = [(epoch, value) for epoch, value in history if epoch > record.epochs]
        if newer:
            result: dict[str, Any] = {EPOCH: newer[-1][0], HISTORY_KEY: newer}
            try:  # the step counts its last epoch logged (the report table's steps, the skipped share)
                logged = self.tracker.latest_metrics(record.run_id)
                result.update({key: logged[key] for key in (STEPS_KEY, SKIPPED_KEY) if key in logged})
            except Exception:  # noqa: BLE001 - the counts stay as the last report left them
                pass
            self.state.observe(record, result)
            self._report(trial_id, record, result)
        return history

    def _tell(self, trial: optuna.Trial, record: TrialRecord) -> None:
        verdict = study_verdict(record.status, self.spec.search.diverged_as)
        attrs: dict[str, Any] = {"status": record.status, "steps": record.steps, "skipped_share": record.skipped_share}
        if record.epoch_s is not None:
            attrs[COST_ATTR] = record.epoch_s
        record_trial(trial, attrs={**attrs, **({"reason": record.reason} if verdict == TELL_INFEASIBLE else {})})
        if verdict == TELL_COMPLETE:
            self.study.tell(trial, record.value)
        elif verdict == TELL_PRUNED:
            self.study.tell(trial, state=TrialState.PRUNED)
        elif verdict == TELL_INFEASIBLE:
            # Infeasible: TPE ranks it below every feasible trial and moves away from its region.
            trial.set_constraint(record.status, 1.0)
            worst = math.inf if self.spec.mode == "min" else -math.inf
            self.study.tell(trial, record.value if record.value is not None else worst)
        else:
            self.study.tell(trial, state=TrialState.FAIL)

    def _report(self, trial_id: str, record: TrialRecord, result: dict[str, Any] | None) -> None:
        """Each epoch's metric as an Optuna intermediate value: a report carries the epochs since the last."""
        trial = self.live.get(trial_id)
        if trial is None:
            return
        history = (result or {}).get(HISTORY_KEY) or (
            [(record.epochs, record.value)] if record.value is not None else []
        )
        fresh = fresh_intermediate_values(history, self.reported.get(trial_id, 0))
        record_trial(trial, fresh)
        if fresh:
            self.reported[trial_id] = max(epoch for epoch, _ in fresh)
