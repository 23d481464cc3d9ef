"""A Ray Tune searcher driven by an Optuna study kept on disk.

Each suggestion is an Optuna ``ask`` with the spec's (conditional) space sampled
define-by-run; each epoch's metric is reported as an intermediate value; each ending is
told back: completed trials as COMPLETE, trials ASHA cut as PRUNED, errors as FAIL.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from sweeps.params import sample
from sweeps.spec import SweepSpec
from sweeps.state import COMPLETED, ENGINE_KEY, FAILED, INTERRUPTED, PRUNED, SweepState, TrialRecord
from sweeps.tracking import SweepTracker


class OptunaSearcher(Searcher):
    """Suggests configs from ``study`` and tells it how each trial ended."""

    def __init__(
        self, spec: SweepSpec, study: optuna.Study, state: SweepState, tracker: SweepTracker, sweep: str
    ) -> None:
        super().__init__(metric=spec.metric, mode=spec.mode)
        self.spec, self.study, self.state, self.tracker, self.sweep = spec, study, state, tracker, sweep
        self.live: dict[str, optuna.Trial] = {}
        self.reported: dict[str, int] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any) -> bool:
        """Accept Tune's metric and mode (the spec's own)."""
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """Ask Optuna for a point, open its MLflow run, and return the trial's config."""
        trial = self.study.ask()
        sampled = sample(trial, self.spec.params, self.spec.fixed)
        params = self.spec.resolve(sampled)
        run_id = self.tracker.create_trial_run(self.sweep, trial.number, trial_id, params, sampled)
        for key, value in (("ray_trial_id", trial_id), ("mlflow_run_id", run_id), ("config", params)):
            trial.set_user_attr(key, value)
        self.live[trial_id] = trial
        self.state.trials[trial_id] = TrialRecord(trial.number, trial_id, run_id, params, sampled)
        engine = {
            "trainer": self.spec.trainer,
            "metric": self.spec.metric,
            "epochs": self.spec.budget.epochs,
            "threads": max(1, int(self.spec.budget.cpus_per_trial)),
            "tracking_uri": self.tracker.uri,
            "run_id": run_id,
        }
        return {**params, ENGINE_KEY: engine}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Record the epoch and report the metric to Optuna as an intermediate value."""
        record = self.state.trials.get(trial_id)
        if record is not None:
            self.state.observe(record, result)
            self._report(trial_id, record)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Tell Optuna how the trial ended and record it in the sweep state."""
        record = self.state.trials.get(trial_id)
        trial = self.live.get(trial_id)
        if record is None or trial is None:
            return
        self.state.observe(record, result)
        self._report(trial_id, record)
        del self.live[trial_id]
        status, reason = self._outcome(trial_id, record, result, error)
        trial.set_user_attr("status", status)
        if status == COMPLETED:
            self.study.tell(trial, record.value)
        elif status == PRUNED:
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, state=TrialState.FAIL)
        self.state.finish(record, status, reason)

    def _outcome(
        self, trial_id: str, record: TrialRecord, result: dict[str, Any] | None, error: bool
    ) -> tuple[str, str]:
        if error:
            return FAILED, ""
        if trial_id in self.state.pruned:
            return PRUNED, f"stopped by ASHA after epoch {record.epochs}"
        if not result:
            return INTERRUPTED, "stopped before it reported"
        if record.value is None:
            return FAILED, f"no finite {self.spec.metric} reported"
        if record.epochs < self.spec.budget.epochs:
            return INTERRUPTED, f"stopped after epoch {record.epochs} of {self.spec.budget.epochs}"
        return COMPLETED, ""

    def _report(self, trial_id: str, record: TrialRecord) -> None:
        trial = self.live.get(trial_id)
        if trial is None or record.value is None or record.epochs <= self.reported.get(trial_id, 0):
            return
        trial.report(record.value, step=record.epochs)
        self.reported[trial_id] = record.epochs
