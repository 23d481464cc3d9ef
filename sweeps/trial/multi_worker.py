"""Multi-worker trials (``budget.workers_per_trial > 1``): Ray Train's TorchTrainer inside a Tune trial.

The Tune trial is a light driver (it holds no CPU or GPU): it starts a Ray Train V2 run of
``workers_per_trial`` workers, each with ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs, in
their own placement group, with a torch process group (NCCL on GPUs, gloo on CPUs). Each worker
runs the trainer; the trainer's plain ``torch.distributed`` hooks (``trainables.data_parallel``)
average gradients, shard the training data and sum validation metrics over the ranks.

- Every rank's step diagnostics are averaged over the ranks before the divergence detector sees
  them, so every rank's detector sees the same values and stops at the same step: a NaN on one
  rank stops them all.
- Rank 0 alone logs to MLflow (steps, epochs, images, provenance, curves) and saves checkpoints
  (trainer, epoch, step counts and undelivered metrics, as a one-worker trial does).
- Every rank runs the same epoch loop as a one-worker trial (``sweeps.trial.epoch_loop``); at the
  epochs its cadence picks (rank 0's decision, which every rank follows) all ranks call
  ``ray.train.report``; a Ray Train callback in the controller relays
  rank 0's metrics and checkpoint to the driver, which reports them to Tune (so ASHA, the Optuna
  searcher and the checkpoint bookkeeping work as for one-worker trials) and sends Tune's answer
  back: rank 0 waits for it and every rank follows it, so a trial ASHA stops ends after that
  epoch, as a one-worker trial does, with everything recorded and the workers' resources freed
  by Ray Train itself (``fit`` runs in a detached launcher actor, which a stopped trial's end
  does not take down).
- A worker's exception ends the trial with that exception (out-of-memory is still ``oom``); its
  traceback goes to the trial's MLflow run.
"""

from __future__ import annotations

import tempfile
import traceback
from collections.abc import Callable
from typing import Any

import torch
from ray.train.v2.api.callback import UserCallback

from sweeps.compat.ray_internals import worker_cause
from sweeps.core.plan import TrialPlan
from sweeps.tracking.trial_logger import TrialLogger
from sweeps.trial.epoch_loop import CheckpointState, EpochLoop, load_checkpoint, save_checkpoint
from sweeps.trial.one_worker import begun_too_late, failure_result, settle_process, split_config
from trainables.data_parallel import agree, mean_over_ranks, rank

RELAY_TIMEOUT_S = 600.0
PROGRESS_ATTR = "sweep_progress"
"""Set on a worker's exception: its rank's progress (``EpochLoop.progress``: epochs, steps, unreported metrics)."""
TRACEBACK_ATTR = "sweep_traceback"
"""Set on a worker's exception: its traceback as that rank formatted it (a pickled exception keeps none: a
user's trial run held one line, ``RuntimeError: injected failure on rank 1``)."""


# ---------------------------------------------------------------------------------------------
# The Tune trial: a driver for one Ray Train run
# ---------------------------------------------------------------------------------------------


def run_multi_worker_trial(config: dict[str, Any]) -> None:
    """Run one trial on ``workers`` Ray Train workers; relay rank 0's reports to Tune and Tune's answers back.

    ``TorchTrainer.fit`` runs in a detached launcher actor, not in this trial's process: when Tune
    stops the trial it ends this process, and a Train run owned by it would be killed with it,
    its last records unsent and its placement group left behind. Instead rank 0 waits after each
    epoch's report for the answer (go on, or stop), and on a stop, or when this process is gone,
    every rank leaves its loop, rank 0 closes its MLflow logger, and Ray Train ends the run and
    frees the workers' resources itself.
    """
    import ray
    from ray import tune
    from ray.util.queue import Queue

    plan, _ = split_config(config)
    if begun_too_late(plan):
        return
    relay: Any = Queue(maxsize=1, actor_options={"num_cpus": 0})
    control: Any = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = _torch_trainer(config, plan, relay, control, tune.get_checkpoint())
    # Outside the trial's placement group (Tune makes child actors join it by default): removing
    # that group when the trial ends would kill the launcher and the Train run with it.
    launcher = ray.remote(num_cpus=0)(_Launcher).options(lifetime="detached", scheduling_strategy="DEFAULT").remote()
    launcher.run.remote(trainer, relay)  # type: ignore[attr-defined]
    while True:
        item = relay.get()
        if item[0] == "done":
            error = item[1]
            break
        _, metrics, checkpoint = item
        try:
            _report_to_tune(metrics, checkpoint)
        except BaseException:  # Tune stopped the trial (ASHA, end of sweep): the workers stop too
            _answer(control, STOP)
            raise
        _answer(control, GO)
    if error is not None:
        cause, worker_traceback = worker_cause(error)
        worker_traceback = worker_traceback or str(getattr(cause, TRACEBACK_ATTR, ""))
        logger = TrialLogger(plan.tracking_uri, plan.run_id)
        logger.log_failure(cause)
        if worker_traceback:  # where the worker raised, rather than where this process re-raises
            logger.log_text(worker_traceback, "traceback.txt")
        logger.close()
        # Reported as the trial's last result, as one-worker trials do: raised, Ray would retry
        # the trial (budget.retries), rerunning a worker's bug or out-of-memory error.
        tune.report(failure_result(plan, cause, dict(getattr(cause, PROGRESS_ATTR, {}))))


GO, STOP = "go", "stop"


def _answer(control: Any, answer: str) -> None:
    try:
        control.put(answer, timeout=RELAY_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - no rank is waiting (the run ended): nothing to tell
        pass


class _Launcher:
    """Runs ``TorchTrainer.fit`` as a detached actor (so it outlives a stopped trial), then exits."""

    def run(self, trainer: Any, relay: Any) -> None:
        """Fit; send ``("done", error or None)`` to the trial; end this actor."""
        import ray

        error: BaseException | None = None
        try:
            trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the trial, which raises it
            error = exc
        for item in (("done", error), ("done", RuntimeError(repr(error)) if error else None)):
            try:
                relay.put(item, timeout=RELAY_TIMEOUT_S)
                break
            except Exception:  # noqa: BLE001 - unpicklable error (try its text), or the trial is gone
                continue
        ray.actor.exit_actor()


def _torch_trainer(config: dict[str, Any], plan: TrialPlan, relay: Any, control: Any, restore: Any) -> Any:
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer

    gpus, cpus = float(plan.gpus), float(plan.cpus)
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}
    storage = tune.get_context().get_storage()
    return TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config, "restore": restore, "control": control},
        scaling_config=ray.train.ScalingConfig(
            num_workers=int(plan.workers), use_gpu=gpus > 0, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo"),
        run_config=ray.train.RunConfig(
            name="train",
            storage_path=storage.trial_fs_path,
            storage_filesystem=storage.storage_filesystem,
            callbacks=[_Relay(relay)],  # type: ignore[list-item]
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
    )


def _report_to_tune(metrics: dict[str, Any], checkpoint: Any) -> None:
    """Report rank 0's metrics, with its checkpoint copied into the trial's own storage."""
    from ray import tune

    if checkpoint is None:
        tune.report(metrics)
        return
    try:
        tune.report(metrics, checkpoint=tune.Checkpoint(checkpoint.path, checkpoint.filesystem))
    finally:  # Tune holds its copy now (or stopped the trial); Ray Train's would pile up one per epoch
        try:
            checkpoint.filesystem.delete_dir(checkpoint.path)
        except Exception:  # noqa: BLE001 - a leftover copy only costs disk
            pass


class _Relay(UserCallback):
    """Ray Train callback (runs in the Train controller): rank 0's report goes to the driver."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        """Hand rank 0's metrics and the checkpoint to the trial."""
        try:
            self.queue.put(("report", dict(metrics[0]), checkpoint), timeout=RELAY_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - the trial is gone; rank 0 then stops on its own
            pass


# ---------------------------------------------------------------------------------------------
# One Ray Train worker
# ---------------------------------------------------------------------------------------------


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """Train on one rank: every rank trains and validates; rank 0 records."""
    import ray.train.torch

    plan, params = split_config(loop_config["config"])
    settle_process(plan)
    if plan.gpus > 0 and torch.cuda.is_available():
        torch.cuda.set_device(ray.train.torch.get_device())  # "auto"/"cuda" then means this rank's GPU
    logger = TrialLogger(plan.tracking_uri, plan.run_id, step_every_s=plan.step_every_s) if rank() == 0 else None
    # diagnostics averaged over ranks: every rank's detector fires at the same step
    loop = EpochLoop(plan, params, logger, reduce=mean_over_ranks)
    try:
        loop.run(TrainChannel(loop_config["control"], loop_config.get("restore")))
    except Exception as exc:
        setattr(exc, PROGRESS_ATTR, loop.progress())  # travels with the error to the Tune trial
        where = f"rank {rank()} of the trial's workers:\n"
        setattr(exc, TRACEBACK_ATTR, where + "".join(traceback.format_exception(exc)))
        if logger is not None:
            logger.record_held()  # the steps that led to the failure
        raise
    finally:
        if logger is not None:
            loop.log_curves()
            logger.close()


class TrainChannel:
    """The loop's channel on a Ray Train rank: every rank reports; rank 0 checkpoints and waits for Tune's answer."""

    def __init__(self, control: Any, restore: Any) -> None:
        self.control, self.restored_from = control, restore

    def restore(self) -> CheckpointState | None:
        """The trial's checkpoint on every rank, if it is being restored."""
        import ray.train

        checkpoint = ray.train.get_checkpoint() or self.restored_from
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return load_checkpoint(folder)

    def agree(self, decision: bool) -> bool:
        """Rank 0's decision on every rank."""
        return agree(decision)

    def report(self, result: dict[str, Any], state: Callable[[], CheckpointState] | None) -> bool:
        """Report on every rank (rank 0 adds the checkpoint); True if the trial goes on.

        Without a state (a diverged trial's last report) nothing is saved and nothing awaited.
        Otherwise rank 0 waits for Tune's answer, which every rank then follows.
        """
        import ray.train

        if state is None:
            ray.train.report(result)
            return False
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank() == 0:
                save_checkpoint(state(), folder)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(result, checkpoint=checkpoint)
        go = False
        if rank() == 0:
            try:
                go = self.control.get(timeout=RELAY_TIMEOUT_S) == GO
            except Exception:  # noqa: BLE001 - no answer, or the trial is gone: stop
                go = False
        return agree(go)
