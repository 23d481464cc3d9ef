"""What ``run.step`` costs per optimizer step: the plain loop with and without it, side by side in one run.

The loop is ``examples/plain_loop.py``'s (a 3-layer convolutional denoiser, 32 px images, batches
of 32, Adam), as ``examples/plain_loop_sweepable.py`` runs it. Compared, interleaved repeat by
repeat on the same weights' shapes and data:

- ``plain``: the loop without ``run.step``;
- ``run.step``: plus ``run.step(loss=loss, optimizer=optimizer)`` each step, through the sweep's
  real step hook (step contract derived, counted, the divergence detector watching), without a
  tracking store, as under ``sweeps train``;
- ``run.step+mlflow``: the same with the trial's MLflow logger buffering every step's values
  (SQLite in a temp folder, sent by its background thread about every second), as in a sweep.

Printed per mode: the median wall seconds per step over ``--repeats`` epochs of ``--steps`` steps
and its difference from ``plain``; the same for this process's CPU seconds (all its threads, the
MLflow sender's too: on a machine shared with other work, less disturbed by it than the wall
clock); and the CPU time of the calling thread inside the ``run.step`` calls themselves (timed
around each call: the overhead without the noise of the loop around it) as a share of the plain
step's CPU time. On a busy machine read the last column: the loop-level columns then move by
several percent from one run to the next whatever the mode.

Run: .venv/bin/python -m benchmarks.step_overhead [--repeats 15] [--steps 16] [--width 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sweeps.core.keys import SKIPPED_KEY, STEPS_KEY
from sweeps.core.plan import TrialPlan
from sweeps.tracking.curves import CurveHistory
from sweeps.tracking.trial_logger import TrialLogger
from sweeps.trial.epoch_loop import StepWatch, detector_for
from sweeps.trial.function_run import FunctionRun
from trainables.data import procedural_images

MODES = ("plain", "run.step", "run.step+mlflow")


def make_run(logger: TrialLogger | None) -> FunctionRun:
    """A function trainer's run with the sweep's step hook (the detector's default settings)."""
    plan = TrialPlan("examples.plain_loop_sweepable:train", "val_loss", 1)
    counts = {STEPS_KEY: 0.0, SKIPPED_KEY: 0.0}
    hook = StepWatch(detector_for(plan), counts, logger, CurveHistory())
    return FunctionRun({"lr": 1e-3}, 10**6, hook, lambda epoch, metrics, image: True)


class Loop:
    """The plain loop's model, optimizer and data, trained ``steps`` steps at a time."""

    def __init__(self, width: int) -> None:
        torch.manual_seed(0)
        self.train = procedural_images(256, 32, seed=0)
        self.model = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1),
        )  # fmt: skip
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.start = 0

    def steps(self, count: int, run: FunctionRun | None) -> tuple[float, float, float, float]:
        """Per step over ``count`` steps: wall seconds, this process's CPU seconds (all its threads),
        the CPU seconds of this thread inside ``run.step``, and inside ``optimizer.step()`` (where
        ``run.step``'s step pre-hook reads the gradient norms, from the second call on)."""
        inside = stepping = 0.0
        cpu = time.process_time()
        began = time.perf_counter()
        for _ in range(count):
            x = self.train[self.start : self.start + 32]
            self.start = (self.start + 32) % len(self.train)
            loss = F.mse_loss(self.model(x + 0.1 * torch.randn_like(x)), x)
            self.optimizer.zero_grad()
            loss.backward()
            before = time.thread_time()
            self.optimizer.step()
            stepping += time.thread_time() - before
            if run is not None:
                before = time.thread_time()
                run.step(loss=loss, optimizer=self.optimizer)
                inside += time.thread_time() - before
        wall = time.perf_counter() - began
        return wall / count, (time.process_time() - cpu) / count, inside / count, stepping / count


def measure(repeats: int, steps: int, width: int) -> dict[str, dict[str, Any]]:
    """Median per-step times of each mode, repeats interleaved."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("step-overhead")).info.run_id
        logger = TrialLogger(uri, run_id)
        runs: dict[str, FunctionRun | None] = {"plain": None, "run.step": make_run(None)}
        runs["run.step+mlflow"] = make_run(logger)
        loops = {mode: Loop(width) for mode in MODES}
        for mode in MODES:  # warm-up: first-use costs out of the clock
            loops[mode].steps(steps, runs[mode])
        times: dict[str, list[tuple[float, float, float, float]]] = {mode: [] for mode in MODES}
        for _ in range(repeats):
            for mode in MODES:
                times[mode].append(loops[mode].steps(steps, runs[mode]))
        logger.close(timeout=120)
    plain, plain_cpu, _, plain_stepping = (statistics.median(t[i] for t in times["plain"]) for i in range(4))
    table = {}
    for mode in MODES:
        step, cpu, inside, stepping = (statistics.median(t[i] for t in times[mode]) for i in range(4))
        inside += stepping - plain_stepping  # the hook's share of optimizer.step()
        table[mode] = {
            "step_s": step,
            "vs_plain": step / plain - 1.0,
            "cpu_s": cpu,
            "cpu_vs_plain": cpu / plain_cpu - 1.0,
            "inside_s": inside,
            "share": inside / plain_cpu,
        }
    return table


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = measure(args.repeats, args.steps, args.width)
    print(f"plain loop, width {args.width}, batch 32, 32 px, {args.threads} thread(s): "
          f"{args.repeats} x {args.steps} steps per mode, interleaved")  # fmt: skip
    print(
        f"{'mode':<17} {'ms/step':>8} {'vs plain':>9} {'cpu ms/step':>12} {'vs plain':>9} "
        f"{'run.step cpu ms':>16} {'of a step':>10}"
    )
    for mode, row in table.items():
        inside = f"{row['inside_s'] * 1e3:16.3f}" if mode != "plain" else f"{'-':>16}"
        share = f"{row['share']:10.2%}" if mode != "plain" else f"{'-':>10}"
        print(
            f"{mode:<17} {row['step_s'] * 1e3:8.3f} {row['vs_plain']:+9.2%} {row['cpu_s'] * 1e3:12.3f} "
            f"{row['cpu_vs_plain']:+9.2%} {inside} {share}"
        )


if __name__ == "__main__":
    main()
