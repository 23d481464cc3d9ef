"""Logging benchmark: a trial logging 10 metrics every step at about 50 steps/s.

Side by side in one run, on the same synthetic trial (a fixed amount of matrix work per step):

- ``floor``: the loop alone, in-process, no logging;
- ``ours``: the loop with our trial logger (``TrialLogger.add_step``: batched, sent by a background
  thread), in-process;
- ``ray-report``: a Ray Tune trial calling ``tune.report`` every step, no logger;
- ``ray-mlflow-cb``: the same with Ray's ``MLflowLoggerCallback`` (how a Ray user gets per-step
  metrics into MLflow);
- ``ray-ours``: a Ray Tune trial using our logger per step and reporting once at the end.

Prints the step time, its overhead over the floor, the wall time until every metric was in
MLflow, and how many metric values MLflow holds afterwards (10 per step expected).

Run: .venv/bin/python -m benchmarks.logging [--steps 500]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

METRICS = 10


def calibrate(target_s: float = 0.014) -> int:
    """Matrix multiplications per step for about ``target_s`` seconds per step."""
    torch.set_num_threads(1)
    a = torch.randn(192, 192)
    start = time.perf_counter()
    for _ in range(20):
        a @ a
    per = (time.perf_counter() - start) / 20
    return max(1, int(target_s / per))


def work(repeats: int, a: torch.Tensor) -> float:
    """One step's compute; returns a value to log."""
    out = a
    for _ in range(repeats):
        out = torch.tanh(a @ out)
    return float(out[0, 0])


def step_metrics(step: int, value: float) -> dict[str, float]:
    """Ten metrics for a step."""
    return {f"m{i}": value + i + step * 1e-3 for i in range(METRICS)}


def loop(steps: int, repeats: int, log: Any = None) -> list[float]:
    """Run the steps; return each step's duration."""
    torch.set_num_threads(1)
    a = torch.randn(192, 192) / 20
    times = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        value = work(repeats, a)
        if log is not None:
            log(step, step_metrics(step, value))
        times.append(time.perf_counter() - start)
    return times


def run_ours_in_process(uri: str, steps: int, repeats: int) -> tuple[list[float], float, str]:
    """Our logger in-process: step times, seconds until delivered, run id."""
    from mlflow import MlflowClient

    from sweeps.tracking.trial_logger import TrialLogger

    client = MlflowClient(uri)
    experiment = client.create_experiment(f"ours-{time.time_ns()}")
    run_id = client.create_run(experiment).info.run_id
    logger = TrialLogger(uri, run_id)
    start = time.perf_counter()
    times = loop(steps, repeats, logger.add_step)
    logger.close()
    return times, time.perf_counter() - start, run_id


def ray_trial(config: dict[str, Any]) -> None:
    """The synthetic trial under Ray Tune: per-step ``tune.report`` or our logger."""
    from ray import tune

    if config["mode"] == "ours":
        from sweeps.tracking.trial_logger import TrialLogger

        logger = TrialLogger(config["uri"], config["run_id"])
        start = time.perf_counter()
        times = loop(config["steps"], config["repeats"], logger.add_step)
        logger.close()
        tune.report({"step_ms": statistics.median(times) * 1000, "wall": time.perf_counter() - start})
        return
    times: list[float] = []

    def report(step: int, metrics: dict[str, float]) -> None:
        times.append(time.perf_counter())
        tune.report({**metrics, "step": step})

    start = time.perf_counter()
    step_times = loop(config["steps"], config["repeats"], report)
    wall = time.perf_counter() - start
    tune.report({"step_ms": statistics.median(step_times) * 1000, "wall": wall, "step": config["steps"] + 1})


def run_ray(uri: str, mode: str, steps: int, repeats: int, storage: Path) -> tuple[float, float, str]:
    """One Ray Tune trial; returns (median step ms, seconds until everything is in MLflow, run id)."""
    from mlflow import MlflowClient
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    client = MlflowClient(uri)
    name = f"{mode}-{time.time_ns()}"
    experiment = client.create_experiment(name)
    run_id = client.create_run(experiment).info.run_id if mode == "ours" else ""
    callbacks = [MLflowLoggerCallback(tracking_uri=uri, experiment_name=name)] if mode == "mlflow-cb" else []
    config = {"mode": mode, "steps": steps, "repeats": repeats, "uri": uri, "run_id": run_id}
    start = time.perf_counter()
    tuner = tune.Tuner(
        ray_trial,
        param_space=config,
        run_config=tune.RunConfig(storage_path=str(storage), name=name, verbose=0, callbacks=callbacks),
    )
    result = tuner.fit()[0]
    wall = time.perf_counter() - start
    if mode == "mlflow-cb":
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        run_id = runs[0].info.run_id if runs else ""
    return float(result.metrics["step_ms"]), wall, run_id


def stored(uri: str, run_id: str) -> int:
    """How many values of the metrics m0..m9 MLflow holds for a run."""
    from mlflow import MlflowClient

    if not run_id:
        return 0
    client = MlflowClient(uri)
    return sum(len(client.get_metric_history(run_id, f"m{i}")) for i in range(METRICS))


def main() -> None:
    """Run every variant and print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    from sweeps.engine.cluster import start_ray

    folder = Path(tempfile.mkdtemp(prefix="logging-bench-"))
    uri = f"sqlite:///{folder}/mlflow.db"
    repeats = calibrate()
    floor = statistics.median(loop(args.steps, repeats))
    rows = [("floor", floor * 1000, floor * args.steps, 0)]
    times, wall, run_id = run_ours_in_process(uri, args.steps, repeats)
    rows.append(("ours", statistics.median(times) * 1000, wall, stored(uri, run_id)))
    start_ray(num_cpus=2, address="local")  # never attach to a cluster another process started here
    for mode in ("report", "mlflow-cb", "ours"):
        step_ms, wall, run_id = run_ray(uri, mode, args.steps, repeats, folder / "ray")
        rows.append((f"ray-{mode}", step_ms, wall, stored(uri, run_id)))
    print(f"{args.steps} steps of about {floor * 1000:.1f} ms ({1 / floor:.0f} steps/s), {METRICS} metrics per step")
    print(f"{'variant':<15} {'step ms':>8} {'vs floor':>9} {'wall s':>8} {'values in MLflow':>17}")
    for name, step_ms, wall, count in rows:
        print(f"{name:<15} {step_ms:>8.2f} {(step_ms / 1000 - floor) / floor:>+9.1%} {wall:>8.1f} {count:>17}")


if __name__ == "__main__":
    main()
