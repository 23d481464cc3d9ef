"""What a one-worker trial's recording costs in CPU, per trial, on the search-quality vae task's trainer.

On a machine whose every core trains a trial (2 trials on 2 CPUs, as in ``search_quality``), the
CPU a trial spends on anything but training comes out of training: wall-clock benchmarks with an
idle core beside the trial (``benchmarks/logging.py``) do not show it. Side by side in one process,
interleaved repeat by repeat, each a whole trial of the task's epochs on one config:

- ``bare``: the trainer alone (``train_epoch`` + ``validate``), as Optuna alone runs it;
- ``loop``: the same through the engine's ``EpochLoop`` with no tracking store (the divergence
  detector watching every step, reports with checkpoints at the sweep's own cadence);
- ``loop+mlflow``: plus the trial's real ``TrialLogger`` on a SQLite store in a temp folder, as in
  a sweep (step values, epoch metrics, curves and epoch images, provenance, delivery before each
  report).

Printed: the median CPU seconds per trial (``time.process_time``: every thread of the process,
the MLflow sender's too) and wall seconds, each against ``bare``; then, for ``loop+mlflow``, where
its extra CPU goes (the calling thread's CPU in each part, the sender thread's CPU by kind of call,
per trial). The plan is the sweep's own (``trial_plan`` of the task's spec: report epochs,
``record.step_every_s``); Tune's report and checkpoint copy are left out (no Ray here).

Run: .venv/bin/python -m benchmarks.trial_recording [--repeats 5] [--config '{"lr": 0.001, ...}']
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from benchmarks.search_quality import TASKS
from benchmarks.sq_trainer import make_trainer

CONFIG = {"lr": 1e-3, "kernel_size": 3, "latent_dim": 8, "kl_weight": 1e-3, "output_activation": "sigmoid"}
"""The searched values of the one config every mode trains (fp32 unless ``--config`` says otherwise)."""

MODES = ("bare", "loop", "loop+mlflow")


class MemoryChannel:
    """The loop's channel without Ray: a report's checkpoint is written to a temp folder, as Tune's is first."""

    def restore(self) -> None:
        """A fresh start."""
        return None

    def agree(self, decision: bool) -> bool:
        """One worker agrees with itself."""
        return decision

    def report(self, result: dict[str, Any], state: Callable[[], Any] | None) -> bool:
        """Write the checkpoint, as ``TuneChannel.report`` does before ``tune.report``."""
        from sweeps.trial.epoch_loop import save_checkpoint

        if state is None:
            return False
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(state(), folder)
        return True


class Parts:
    """CPU seconds spent in named parts of a trial, the calling thread's (``time.thread_time``)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.calls: Counter[str] = Counter()

    def wrap(self, owner: Any, name: str, label: str) -> None:
        """Count the CPU of ``owner.name`` (a method or module function) under ``label``."""
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.cpu[label] = self.cpu.get(label, 0.0) + time.thread_time() - began
                self.calls[label] += 1

        setattr(owner, name, timed)

    def wrap_sender(self) -> None:
        """Count the sender thread's CPU per kind of call (metrics, artifacts, tags)."""
        from sweeps.tracking import trial_logger

        original = trial_logger._Sender._send

        def timed(sender: Any, what: str, call: Callable[[], Any]) -> None:
            began = time.thread_time()
            try:
                original(sender, what, call)
            finally:
                kind = "sender: " + ("log metrics" if what.endswith("metrics") else what.split(" ")[0] + " (other)")
                self.cpu[kind] = self.cpu.get(kind, 0.0) + time.thread_time() - began
                self.calls[kind] += 1

        trial_logger._Sender._send = timed  # type: ignore[method-assign,assignment]


class Bench:
    """The task's trainer and plan, and a SQLite MLflow store for ``loop+mlflow``."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        from mlflow import MlflowClient

        from sweeps.spec.sweep_spec import load_spec

        self.task = TASKS["vae"]
        self.params = {**self.task.fixed, "precision": "fp32", **config, "trace_dir": ""}
        spec_file = folder / "spec.yaml"
        budget = {"trials": 10, "epochs": self.task.epochs}
        import yaml

        spec_file.write_text(yaml.safe_dump(self.task.spec("trial-recording", 0, budget)))
        self.uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.spec = load_spec(str(spec_file))
        self.client = MlflowClient(self.uri)
        # its artifacts in the temp folder too (MLflow's default is ./mlruns, beside wherever this runs)
        self.experiment = self.client.create_experiment("trial-recording", (folder / "artifacts").as_uri())

    def bare(self) -> None:
        """The trainer alone."""
        trainer = make_trainer("vae", dict(self.params))
        for _ in range(self.task.epochs):
            trainer.train_epoch()
            trainer.validate()

    def loop(self, recorded: bool) -> None:
        """Through the engine's loop, with the trial's logger when ``recorded``."""
        from sweeps.engine.searcher import trial_plan
        from sweeps.tracking.trial_logger import TrialLogger
        from sweeps.trial.epoch_loop import EpochLoop

        logger = None
        run_id = ""
        if recorded:
            run_id = self.client.create_run(self.experiment).info.run_id  # the driver makes it in a sweep
        plan = trial_plan(self.spec, self.uri if recorded else "", run_id, "")
        if recorded:
            logger = TrialLogger(self.uri, run_id, step_every_s=plan.step_every_s)
        try:
            EpochLoop(plan, dict(self.params), logger).run(MemoryChannel())
        finally:
            if logger is not None:
                logger.close()

    def run(self, mode: str) -> None:
        """One trial in ``mode``."""
        if mode == "bare":
            self.bare()
        else:
            self.loop(recorded=mode == "loop+mlflow")


@contextmanager
def measured(into: list[tuple[float, float]]) -> Iterator[None]:
    """Append (process CPU s, wall s) of the block to ``into``."""
    cpu, wall = time.process_time(), time.perf_counter()
    yield
    into.append((time.process_time() - cpu, time.perf_counter() - wall))


def parts_of_recorded(bench: Bench, trials: int) -> tuple[Parts, float]:
    """Where ``loop+mlflow``'s time goes: the parts' CPU over ``trials`` trials, and the process CPU of them."""
    import trainables.vae
    from sweeps.tracking.trial_logger import TrialLogger
    from sweeps.trial import epoch_loop

    parts = Parts()
    parts.wrap(epoch_loop.StepWatch, "__call__", "each step: detector, step values, curve points")
    parts.wrap(trainables.vae, "output_metrics", "each step: output_mean/std/spread (the trainer's)")
    parts.wrap(epoch_loop.EpochLoop, "log_curves", "each report: curves.png drawn")
    parts.wrap(epoch_loop.EpochLoop, "_log_image", "each epoch: the epoch's image")
    parts.wrap(TrialLogger, "flush", "each report: waiting for delivery (its CPU is the sender's)")
    parts.wrap(epoch_loop, "save_checkpoint", "each report: checkpoint written")
    parts.wrap(epoch_loop.EpochLoop, "_begin", "once: provenance, the run's start")
    parts.wrap_sender()
    began = time.process_time()
    for _ in range(trials):
        bench.run("loop+mlflow")
    return parts, time.process_time() - began


def main() -> None:
    """Print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", type=json.loads, default=CONFIG, help="the searched values (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), args.config)
        for mode in MODES:  # first-use costs (imports, the store's first writes) out of the clock
            bench.run(mode)
        times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for mode in MODES:
                with measured(times[mode]):
                    bench.run(mode)
        parts, cpu = parts_of_recorded(bench, args.repeats)
    epochs = bench.task.epochs
    print(f"vae task's trainer, {epochs} epochs a trial, config {json.dumps(args.config)}; {args.repeats} repeats")
    base_cpu = statistics.median(c for c, _ in times["bare"])
    base_wall = statistics.median(w for _, w in times["bare"])
    print(f"{'mode':14s} {'CPU s/trial':>12s} {'vs bare':>8s} {'wall s/trial':>13s} {'vs bare':>8s}")
    for mode in MODES:
        c = statistics.median(x for x, _ in times[mode])
        w = statistics.median(x for _, x in times[mode])
        print(f"{mode:14s} {c:12.3f} {c / base_cpu - 1:+8.1%} {w:13.3f} {w / base_wall - 1:+8.1%}")
    print(f"\nloop+mlflow, {args.repeats} more trials with its parts timed ({cpu / args.repeats:.3f} CPU s a trial):")
    print(f"{'part':62s} {'calls/trial':>11s} {'CPU ms/trial':>12s} {'of bare':>8s}")
    for label, seconds in sorted(parts.cpu.items(), key=lambda item: -item[1]):
        share = seconds / args.repeats / base_cpu
        print(
            f"{label:62s} {parts.calls[label] / args.repeats:11.1f} {seconds / args.repeats * 1e3:12.1f} {share:8.1%}"
        )


if __name__ == "__main__":
    main()
