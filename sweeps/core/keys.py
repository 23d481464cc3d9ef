"""Every name the driver, the trials and the records share: statuses, report keys, MLflow tags.

One place for the contract between the driver and a trial (the keys a trial's report carries)
and for the tags a trial's MLflow run gets. The engine's report keys start with ``sweep/`` and its
tags with ``sweep.``, so they never clash with a trainer's own metric names.
"""

from __future__ import annotations

# How a trial ended (MLflow tag ``sweep.status``, Optuna user attribute ``status``).
COMPLETED = "completed"
PRUNED = "pruned"
FAILED = "failed"
DIVERGED = "diverged"
OOM = "oom"
INTERRUPTED = "interrupted"
RUNNING = "running"
STATUSES = (COMPLETED, PRUNED, DIVERGED, FAILED, OOM, INTERRUPTED)

ENGINE_KEY = "__sweep__"
"""Key of the engine's own entry (a :class:`sweeps.core.plan.TrialPlan` as a dict) in a Ray trial config."""

# Keys of a trial's report to the driver.
REPORT_PREFIX = "sweep/"
EPOCH = "epoch"
STEPS_KEY = "sweep/steps"
"""Optimizer steps the trial has taken so far."""
SKIPPED_KEY = "sweep/skipped_steps"
"""Of those, the steps a loss scaler skipped (overflowed)."""
EPOCH_SECONDS_KEY = "sweep/epoch_s"
"""Median wall seconds of the trial's epochs so far (training and validation), what an epoch of its config costs."""
FIRST_EPOCH_SECONDS_KEY = "sweep/first_epoch_s"
"""Wall seconds from when the trial's process began it to the end of its first epoch there (the trainer's build in)."""
DIVERGED_KEY = "sweep/diverged"
"""Set in a trial's last report when it diverged (with the signal, reason, step and onset keys)."""
NOT_STARTED_KEY = "sweep/not_started"
"""Set in a one-worker trial's only report when Tune began it after ``budget.time`` ran out: it trained nothing."""
FAILED_KEY = "sweep/failed"
"""Set in a trial's last report when it raised (with the reason key): recorded, not retried by Ray."""
TIME_UP_KEY = "sweep/trial_time_up"
"""Set in a trial's last report when ``budget.trial_time`` ran out and it stopped at that epoch's end."""
REASON_KEY = "sweep/reason"
SIGNAL_KEY = "sweep/signal"
STEP_KEY = "sweep/step"
ONSET_KEY = "sweep/onset"
FINAL_KEY = "sweep/final"
"""On a completed trial's run only: the sweep's metric at its last epoch (the MLflow trials view sorts by it, so a
pruned trial's earlier-epoch value never ranks among the completed ones)."""
OBSERVED_SIGNAL_KEY = "sweep/observed_signal"
"""With ``divergence.mode: observe``: the signal that would have stopped the trial (step and reason below)."""
OBSERVED_STEP_KEY = "sweep/observed_step"
OBSERVED_REASON_KEY = "sweep/observed_reason"
OBSERVED_LATER_KEY = "sweep/observed_later"
"""Observe mode: ``signal@step: reason`` of a signal no later step undoes, after a first flag that may recover."""
COLLAPSED_AT_END_KEY = "sweep/collapsed_at_end"
"""In observe mode (an audit's re-run too): the last report's reason when the output was still collapsed at the end."""
HISTORY_KEY = "sweep/history"
"""A report's ``[(epoch, metric), ...]``: every epoch since the trial's previous report."""

# MLflow tags of a trial's run (and the parent's summary tags).
TAG_STATUS = "sweep.status"
TAG_REASON = "sweep.reason"
TAG_EPOCHS = "sweep.epochs"
TAG_SIGNAL = "sweep.signal"
TAG_DIVERGENCE_STEP = "sweep.divergence_step"
TAG_RESTARTS = "sweep.restarts"
TAG_WARNING = "sweep.warning"
"""A trial's run: the last thing that went wrong without ending it (e.g. curves that could not be drawn)."""
TAG_PRINTS = "sweep.prints"
"""Where the trial's own prints went: ``<host>:<file>``, the Ray worker's log file on that node."""
TAG_RESTART_REASON = "sweep.restart_reason"
TAG_ROLE = "sweep.role"
TAG_RESCUE_OF = "sweep.rescue_of"
TAG_RESCUED_BY = "sweep.rescued_by"
TAG_TRIAL = "sweep.trial"
TAG_NAME = "sweep.name"
TAG_RESUMES = "sweep.resumes"
TAG_HALTED = "sweep.halted"
"""On a parent run: why the sweep stopped before its budget (a trial failed in a way every trial would)."""
TAG_TIME_RAN_OUT = "sweep.time_ran_out"
"""On the parent run when ``budget.time`` ended the sweep before its ``budget.trials``: how many had ended."""
GIT_COMMIT_TAG = "mlflow.source.git.commit"
"""MLflow's own tag for the code's commit (its UI shows it on a run): the trainer's checkout."""
TAG_WARM_START_TRIAL = "sweep.warm_start.trial"
"""On a warm start's re-run of an earlier sweep's trial: which (``s1 t005``, ``s1 t007 (interrupted)``)."""
TAG_BEST_TRIAL = "sweep.best_trial"
TAG_BEST_RUN_ID = "sweep.best_run_id"
TAG_WOULD_STOP_SIGNAL = "sweep.would_stop.signal"
"""With ``divergence.mode: observe``: the signal that would have stopped the trial; with its step and reason."""
TAG_WOULD_STOP_STEP = "sweep.would_stop.step"
TAG_WOULD_STOP_REASON = "sweep.would_stop.reason"
TAG_WOULD_STOP_LATER = "sweep.would_stop.later"
"""In observe mode: a signal no later step undoes (``signal@step: reason``), after a first flag that may recover."""
TAG_COLLAPSED_AT_END = "sweep.collapsed_at_end"
"""In observe mode: the trial's output was still collapsed (constant) when its training ended; the reason."""
TAG_AUDIT_OF = "sweep.audit_of"
"""On an audit run (``sweeps audit``): the run id of the stopped trial it re-runs to the end."""
TAG_AUDIT_VERDICT = "sweep.audit.verdict"
"""On a stopped trial's run after an audit: ``false_stop`` (it would have ended healthy) or ``true_stop``."""
TAG_AUDIT_METRIC = "sweep.audit.metric"
"""On a stopped trial's run after an audit: the metric its re-run reached at the last epoch."""
TAG_AUDIT_RUN = "sweep.audit.run_id"
AUDIT_FALSE_STOP, AUDIT_TRUE_STOP = "false_stop", "true_stop"
AUDIT_UNJUDGED = "unjudged"
"""An audit verdict when the sweep has no completed trial to judge a finite re-run against."""
TAG_AUDIT_STOPS = "sweep.audit.stops"
"""On the parent run after an audit: heuristic stops re-run, false ones, and whether the best would have changed."""
TAG_AUDIT_FALSE_STOPS = "sweep.audit.false_stops"
TAG_AUDIT_BEST_CHANGED = "sweep.audit.best_changed"
TAG_DRAWN_BY = "sweep.drawn_by"
"""On a trial's run: how the sampler drew its values (``warm_start``, ``random``, ``startup`` or ``tpe``)."""
TAG_RAY_TRIAL_ID = "ray.trial_id"
TAG_OPTUNA_NUMBER = "optuna.trial_number"
TAG_PARENT_RUN = "mlflow.parentRunId"
ROLE_TRIAL, ROLE_RESCUE, ROLE_PARENT, ROLE_AUDIT = "trial", "rescue", "parent", "audit"


def count_tag(status: str) -> str:
    """The parent run's tag counting trials that ended with ``status``."""
    return f"sweep.{status}"


def diverged_by_tag(signal: str) -> str:
    """The parent run's tag counting trials stopped by divergence ``signal``."""
    return f"sweep.diverged.{signal}"


def best_metric_tag(metric: str) -> str:
    """The parent run's tag holding the best trial's ``metric``."""
    return f"sweep.best_{metric}"


EPOCHS_FIELD = "epochs"
"""A class trainer's ``Config`` field the engine fills with the epochs the trial runs (``budget.epochs``,
``sweeps train --epochs``), as it fills ``seed``: a learning-rate schedule over the whole run needs it."""
