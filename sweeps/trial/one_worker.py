"""The Ray Tune trainable of a sweep: one trial in one process, reporting to Tune.

The trial runs the :class:`~sweeps.trial.epoch_loop.EpochLoop`; its channel is Ray Tune
(``tune.report`` with a checkpoint, ``tune.get_checkpoint`` on a restart). A multi-worker trial
(``budget.workers_per_trial > 1``) has its own trainable, ``sweeps.trial.multi_worker``.

An exception raised in the trial (a bug, a bad config, out of memory) ends it at once: it is
reported as the trial's last result, so Ray never retries it. Only a trial whose process or
node died reaches Ray's failure handling, which restarts it from its last checkpoint (up to
``budget.retries`` times) in a new process, on any node: epochs, step counts and the MLflow run
continue where the checkpoint was, nothing logged is lost or logged twice.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

from ray import tune

from sweeps.core.failures import failure_reason
from sweeps.core.keys import ENGINE_KEY, EPOCH, FAILED_KEY, NOT_STARTED_KEY, REASON_KEY, TAG_PRINTS
from sweeps.core.plan import TrialPlan
from sweeps.tracking.trial_logger import TrialLogger
from sweeps.trial.epoch_loop import (
    DELIVERY_TIMEOUT_S,
    CheckpointState,
    EpochLoop,
    load_checkpoint,
    save_checkpoint,
)
from sweeps.trial.gpu_visibility import hide_unreserved_gpus

START_FOLDER = os.getcwd()
"""The folder this trial process started in (where ``sweeps run`` ran, on a local Ray): each trial starts there."""


def split_config(config: dict[str, Any]) -> tuple[TrialPlan, dict[str, Any]]:
    """A Ray trial config as ``(the engine's plan, the trainer's parameters)``."""
    params = {key: value for key, value in config.items() if key != ENGINE_KEY}
    return TrialPlan.from_config(config[ENGINE_KEY]), params


def prints_file() -> str:
    """``<host>:<file>`` that this process's stdout writes to (a Ray worker's ``.out`` log); '' if not a file."""
    try:
        target = os.readlink("/proc/self/fd/1")
    except OSError:  # no /proc (not Linux)
        return ""
    return f"{socket.gethostname()}:{target}" if os.path.isfile(target) else ""


def failure_result(plan: TrialPlan, exc: BaseException, progress: dict[str, Any]) -> dict[str, Any]:
    """A failed trial's last report: recorded as failed (or oom) by the driver, not retried by Ray.

    ``progress`` (:meth:`EpochLoop.progress`): the epochs it validated since its last report and
    its step counts, which the driver records as it records any report's.
    """
    return {EPOCH: 0, **progress, plan.metric: math.nan, FAILED_KEY: 1.0, REASON_KEY: failure_reason(exc)}


class TuneChannel:
    """The loop's channel in a one-worker trial: Ray Tune's reports and checkpoints."""

    def restore(self) -> CheckpointState | None:
        """Ray's checkpoint when the trial is being restored, else None."""
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return load_checkpoint(folder)

    def agree(self, decision: bool) -> bool:
        """One worker agrees with itself."""
        return decision

    def report(self, result: dict[str, Any], state: Callable[[], CheckpointState] | None) -> bool:
        """``tune.report``, with the checkpoint; Tune ends the trial there if it stops it."""
        if state is None:
            tune.report(result)
            return False
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(state(), folder)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
        return True


def point_fluent_mlflow(tracking_uri: str) -> None:
    """Send a loop's own fluent ``mlflow`` calls to the sweep's store, unless ``MLFLOW_TRACKING_URI`` says otherwise.

    Without it a loop that already logs with ``mlflow.start_run()`` wrote to MLflow's default
    ``./mlflow.db`` beside the sweep's store; trials creating that file at once raced on its tables
    (``table spans already exists``) and failed.
    """
    if tracking_uri:
        os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri)


def settle_process(plan: TrialPlan) -> None:
    """Before a trial (or a rank of one) loads its trainer: the GPUs it may see, where fluent MLflow writes."""
    hide_unreserved_gpus(plan.gpus)  # before the trainer can start CUDA: ``auto`` then means the CPU
    point_fluent_mlflow(plan.tracking_uri)


def start_line(plan: TrialPlan) -> str:
    """The line a trial prints first, so the prints of the trials one worker ran can be told apart."""
    name = plan.label or "a trial"
    return f"==== sweeps: {name} starts (MLflow run {plan.run_id or '-'}) ===="


def begun_too_late(plan: TrialPlan) -> bool:
    """Whether Tune began this trial too late to end its first epoch by ``budget.time``; if so, report it not started.

    A trial asked for ahead of a free slot, begun by Tune as one freed after the deadline, or so
    near it that less time was left than the sweep's fastest first epoch when the trial was asked
    for (``plan.start_by``), would only train past the deadline. Decided here, in the trial's own
    process, before any trainer or rank exists (one clock, so a multi-worker trial's ranks cannot
    disagree). A restarted trial (it has a checkpoint) is not affected: it ends at its epoch's end.
    """
    last = plan.start_by or plan.deadline  # start_by, when set, is never after the deadline
    if not last or time.time() < last or tune.get_checkpoint() is not None:
        return False
    why = "budget.time had run out" if time.time() >= plan.deadline else "too little of budget.time was left"
    print(f"==== sweeps: {plan.label or 'a trial'} not started: {why} ====", flush=True)
    tune.report({EPOCH: 0, plan.metric: math.nan, NOT_STARTED_KEY: 1.0})  # Tune wants the metric in each
    return True


def run_trial(config: dict[str, Any]) -> None:
    """Train one trial: ``config`` holds the trainer's parameters plus the engine's plan."""
    plan, params = split_config(config)
    if begun_too_late(plan):
        return
    settle_process(plan)
    os.chdir(START_FOLDER)  # Tune reuses the process: a trial that changed folder does not move the next one
    logger = TrialLogger(plan.tracking_uri, plan.run_id, step_every_s=plan.step_every_s)
    if printed := prints_file():  # several Ray sessions on a machine: session_latest may be another's
        logger.set_tags({TAG_PRINTS: printed})
    print(start_line(plan), flush=True)  # a worker's log holds the trials it ran one after another
    loop = EpochLoop(plan, params, logger)
    try:
        loop.run(TuneChannel())
    except Exception as exc:  # noqa: BLE001 - any error in the trial ends it, recorded, without a retry
        logger.log_failure(exc)
        loop.log_curves()  # Tune may end this process at the report: deliver first
        logger.flush(timeout=DELIVERY_TIMEOUT_S)
        tune.report(failure_result(plan, exc, loop.progress()))
    finally:
        loop.log_curves()
        logger.close()
