"""Multi-worker trials (``budget.workers_per_trial > 1``): Ray Train's TorchTrainer inside a Tune trial.

The Tune trial is a light driver (it holds no CPU or GPU): it starts a Ray Train V2 run of
``workers_per_trial`` workers, each with ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs, in
their own placement group, with a torch process group (NCCL on GPUs, gloo on CPUs). Each worker
runs the trainer; the trainer's plain ``torch.distributed`` hooks (``trainables/distributed.py``)
average gradients, shard the training data and sum validation metrics over the ranks.

- Every rank's step diagnostics are averaged over the ranks before the divergence detector sees
  them, so every rank's detector sees the same values and stops at the same step: a NaN on one
  rank stops them all.
- Rank 0 alone logs to MLflow (steps, epochs, images, provenance, curves) and saves checkpoints.
- Each epoch all ranks call ``ray.train.report``; a Ray Train callback in the controller relays
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

import math
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import torch
from ray.train.v2.api.callback import UserCallback

from sweeps.record import CurveHistory
from sweeps.spec import Budget, SpecError, SweepSpec
from sweeps.state import ENGINE_KEY, FAILED_KEY
from sweeps.tracking import TrialLogger
from sweeps.trial import (
    CHECKPOINT_FILE,
    DivergedError,
    MetricMissingError,
    _detector,
    _log_curves,
    _log_images,
    _log_provenance,
    divergence_result,
    failure_reason,
    step_hook,
)
from trainables.config import build_config
from trainables.distributed import agree, mean_over_ranks, rank
from trainables.registry import load_trainer

DRIVER_RESOURCES = {"cpu": 0, "memory": 1}
"""What the Tune trial itself asks for: nothing that workers need (Ray wants some resource)."""

RELAY_TIMEOUT_S = 600.0


def trial_resources(budget: Budget) -> dict[str, float]:
    """Tune's resource request per trial: the trial's own, or the driver's when workers train."""
    if budget.workers_per_trial <= 1:
        return {"cpu": budget.cpus_per_trial, "gpu": budget.gpus_per_trial}
    return dict(DRIVER_RESOURCES)


def trial_concurrency(budget: Budget) -> int | None:
    """Trials at once: the spec's, else (with workers) as many worker groups as the cluster holds now.

    A Tune trial with workers holds no resources itself, so Tune alone would start every trial at
    once; this bounds them by the CPUs (and GPUs) the cluster has when the sweep starts.
    """
    if budget.concurrency is not None or budget.workers_per_trial <= 1:
        return budget.concurrency
    return cluster_slots(budget)


def cluster_slots(budget: Budget) -> int:
    """How many trials (each with its workers, CPUs and GPUs) the Ray cluster holds now; at least 1."""
    import ray

    total = ray.cluster_resources()
    fits = [total.get("CPU", 0.0) // (budget.workers_per_trial * max(budget.cpus_per_trial, 1e-3))]
    if budget.gpus_per_trial > 0:
        fits.append(total.get("GPU", 0.0) // (budget.workers_per_trial * budget.gpus_per_trial))
    return max(1, int(min(fits)))


def check_workers_fit(spec: SweepSpec) -> None:
    """Raise SpecError (one line) when one trial's workers can never fit on the Ray cluster.

    Ray Train would otherwise wait for them forever. The cluster's ceiling is its autoscaler's
    maximum where it has one, else what it has now. Starts local Ray if none is running.
    """
    budget = spec.budget
    if budget.workers_per_trial <= 1:
        return
    from sweeps.runner import start_ray

    start_ray()
    ceiling = _max_cluster_resources()
    for name, each in (("CPU", budget.cpus_per_trial), ("GPU", budget.gpus_per_trial)):
        need, have = budget.workers_per_trial * each, ceiling.get(name, 0.0)
        if need > have:
            raise SpecError(
                spec.source,
                [
                    (
                        "budget.workers_per_trial",
                        f"{budget.workers_per_trial} workers x {each:g} {name} need {need:g} {name}s; "
                        f"the Ray cluster has at most {have:g}",
                    )
                ],
            )


def _max_cluster_resources() -> dict[str, float]:
    import ray

    try:
        from ray._private.state import state

        ceiling = state.get_max_resources_from_cluster_config()  # an autoscaler's maximum
    except Exception:  # noqa: BLE001 - a private API: fall back to what the cluster has
        ceiling = None
    return {k: float(v) for k, v in (ceiling or ray.cluster_resources()).items()}


def engine_settings(budget: Budget) -> dict[str, Any]:
    """The entries of a trial's engine config that this module reads."""
    return {"workers": budget.workers_per_trial, "gpus": budget.gpus_per_trial, "cpus": budget.cpus_per_trial}


# ---------------------------------------------------------------------------------------------
# The Tune trial: a driver for one Ray Train run
# ---------------------------------------------------------------------------------------------


def run_distributed_trial(config: dict[str, Any]) -> None:
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

    engine = config[ENGINE_KEY]
    relay: Any = Queue(maxsize=1, actor_options={"num_cpus": 0})
    control: Any = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = _torch_trainer(config, engine, relay, control, tune.get_checkpoint())
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
        cause, worker_traceback = _worker_cause(error)
        logger = TrialLogger(engine["tracking_uri"], engine["run_id"])
        logger.log_failure(cause)
        if worker_traceback:  # where the worker raised, rather than where this process re-raises
            logger.log_text(worker_traceback, "traceback.txt")
        logger.close()
        # Reported as the trial's last result, as one-worker trials do: raised, Ray would retry
        # the trial (budget.retries), rerunning a worker's bug or out-of-memory error.
        tune.report({engine["metric"]: math.nan, FAILED_KEY: 1.0, "sweep/reason": failure_reason(cause)})


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


def _torch_trainer(config: dict[str, Any], engine: dict[str, Any], relay: Any, control: Any, restore: Any) -> Any:
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer

    gpus, cpus = float(engine.get("gpus", 0.0)), float(engine.get("cpus", 1.0))
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}
    storage = tune.get_context().get_storage()
    return TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config, "restore": restore, "control": control},
        scaling_config=ray.train.ScalingConfig(
            num_workers=int(engine["workers"]), use_gpu=gpus > 0, resources_per_worker=resources
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


def _worker_cause(error: BaseException) -> tuple[BaseException, str]:
    """The exception the lowest failed rank raised, and its traceback text, from Ray Train's error."""
    failures = getattr(error, "worker_failures", None)
    if not failures:
        return error, ""
    failure = failures[min(failures)]  # Ray Train wraps it: UserExceptionWithTraceback
    return getattr(failure, "_base_exc", failure), str(getattr(failure, "_traceback_str", ""))


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

    config = loop_config["config"]
    engine = config[ENGINE_KEY]
    params = {key: value for key, value in config.items() if key != ENGINE_KEY}
    if float(engine.get("gpus", 0.0)) > 0 and torch.cuda.is_available():
        torch.cuda.set_device(ray.train.torch.get_device())  # "auto"/"cuda" then means this rank's GPU
    logger = TrialLogger(engine["tracking_uri"], engine["run_id"]) if rank() == 0 else None
    curves = CurveHistory()
    try:
        report = partial(_train_report, control=loop_config["control"])
        train_worker(engine, params, logger, curves, loop_config.get("restore"), report)
    finally:
        if logger is not None:
            _log_curves(curves, logger)
            logger.close()


def _train_report(metrics: dict[str, Any], trainer: Any | None, control: Any) -> bool:
    """Report an epoch on every rank (rank 0 adds the checkpoint); True if the trial goes on.

    Without a trainer (a diverged trial's last report) nothing is saved and nothing awaited.
    Otherwise rank 0 waits for Tune's answer, which every rank then follows.
    """
    import ray.train

    if trainer is None:
        ray.train.report(metrics)
        return False
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank() == 0:
            torch.save({"trainer": trainer.state_dict(), "epoch": metrics["epoch"]}, Path(folder) / CHECKPOINT_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)
    go = False
    if rank() == 0:
        try:
            go = control.get(timeout=RELAY_TIMEOUT_S) == GO
        except Exception:  # noqa: BLE001 - no answer, or the trial is gone: stop
            go = False
    return agree(go)


def train_worker(
    engine: dict[str, Any],
    params: dict[str, Any],
    logger: TrialLogger | None,
    curves: CurveHistory,
    restore: Any,
    report: Any,
) -> None:
    """The epochs of one rank; ``report(metrics, trainer_or_None)`` on every rank each epoch says whether to go on."""
    torch.set_num_threads(max(1, int(engine.get("threads", 1))))
    trainer_cls = load_trainer(engine["trainer"])
    trainer = trainer_cls(build_config(trainer_cls.Config, params))
    metric, epochs = engine["metric"], int(engine["epochs"])
    counts = {"sweep/steps": 0.0, "sweep/skipped_steps": 0.0}
    if hasattr(trainer, "on_step"):
        # diagnostics averaged over ranks: every rank's detector fires at the same step
        trainer.on_step = step_hook(_detector(engine), counts, logger, curves, mean_over_ranks)
    done = _restore(trainer, restore)
    if done == 0 and logger is not None:
        _log_provenance(engine, params, trainer_cls, trainer, logger)
    for epoch in range(done + 1, epochs + 1):
        try:
            metrics = {**mean_over_ranks(trainer.train_epoch()), **trainer.validate()}
        except DivergedError as diverged:
            if logger is not None:
                logger.flush()
            report({metric: math.nan, "epoch": epoch, **counts, **divergence_result(diverged.divergence)}, None)
            return
        if metric not in metrics:
            raise MetricMissingError(
                f"metric {metric!r} not produced by trainer {engine['trainer']!r} "
                f"(it reports: {', '.join(sorted(metrics))})"
            )
        if logger is not None:
            logger.log_metrics(metrics, step=epoch)
            logger.flush()  # queued now: this epoch's report may be the trial's last
            _log_images(trainer, logger, epoch)
        if not report({**metrics, "epoch": epoch, **counts}, trainer):
            return


def _restore(trainer: Any, checkpoint: Any) -> int:
    """Load the trial's checkpoint on every rank, if it is being restored; return the epochs done."""
    import ray.train

    checkpoint = ray.train.get_checkpoint() or checkpoint
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=False)
    trainer.load_state_dict(state["trainer"])
    return int(state["epoch"])
