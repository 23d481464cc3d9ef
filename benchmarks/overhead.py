"""Engine overhead on tiny trials, side by side in one run.

Each trial does almost nothing and reports 10 times (10 "epochs"). Compared:

- ``floor``: plain Optuna + MLflow in one process (ask, 10 ``log_metric``, tell);
- ``ray-tune``: plain Ray Tune as a user sets it up (OptunaSearch + ASHA + MLflowLoggerCallback),
  with ``reuse_actors`` off and on (the better one counts);
- ``ours``: our engine with full recording (MLflow parent/child runs, step logging, artifacts,
  checkpoints, Optuna study on disk).

Prints seconds per trial, results per second and the ratios, and for ours the idle gap of each
trial slot between one trial's last epoch and the next trial's first (median and max). ``--big N``
also runs N trials of ours and prints the driver's peak memory and seconds per trial over the
first and last hundred, and the sampler's time to suggest a trial around trial 100 and trial N.

Run: .venv/bin/python -m benchmarks.overhead [--trials 40] [--big 0] [--every-epoch]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tests.toy_trainer import ToyConfig, ToyTrainer

REPORTS = 10


@dataclass
class TimedConfig(ToyConfig):
    """The toy trainer's config plus the folder its timing lines go to."""

    timing_dir: str = ""


class TimedToy(ToyTrainer):
    """The toy trainer, writing when it was built and when its last epoch ended, with its pid."""

    Config: ClassVar[type] = TimedConfig

    def __init__(self, config: TimedConfig) -> None:
        super().__init__(config)
        self._write("start")

    def validate(self) -> dict[str, float]:
        metrics = super().validate()
        if self.epoch == REPORTS:
            self._write("end")
        return metrics

    def _write(self, event: str) -> None:
        folder = getattr(self.config, "timing_dir", "")
        if folder:
            with open(Path(folder) / f"{os.getpid()}.jsonl", "a") as out:
                out.write(json.dumps({"event": event, "t": time.time()}) + "\n")


def slot_gaps(folder: Path) -> list[float]:
    """Seconds each trial process sat between a trial's last epoch and the next trial's start."""
    gaps = []
    for path in folder.glob("*.jsonl"):
        events = [json.loads(line) for line in path.read_text().splitlines()]
        ends = [e["t"] for e in events if e["event"] == "end"]
        starts = [e["t"] for e in events if e["event"] == "start"]
        gaps += [min((s - end for s in starts if s > end), default=math.inf) for end in ends]
    return [g for g in gaps if g != math.inf]


def trial_ends(folder: Path) -> list[float]:
    """Wall times at which trials ended, sorted."""
    return sorted(
        json.loads(line)["t"]
        for path in folder.glob("*.jsonl")
        for line in path.read_text().splitlines()
        if json.loads(line)["event"] == "end"
    )


class RssSampler:
    """Samples this process's resident memory every ``period`` seconds in a thread."""

    def __init__(self, period: float = 0.5) -> None:
        self.samples: list[tuple[float, float]] = []
        self.period = period
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self.done.wait(self.period):
            with open("/proc/self/statm") as statm:
                rss = int(statm.read().split()[1]) * page / 2**20
            self.samples.append((time.time(), rss))

    def peak(self, start: float, end: float) -> float:
        """Peak RSS in MB between two wall times."""
        return max((mb for t, mb in self.samples if start <= t <= end), default=math.nan)


def floor(trials: int, folder: Path) -> float:
    """Plain Optuna + MLflow in-process: seconds for ``trials`` trials."""
    import mlflow
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    client = mlflow.MlflowClient(f"sqlite:///{folder}/floor.db")
    experiment = client.create_experiment("floor")
    study = optuna.create_study(storage=f"sqlite:///{folder}/floor-optuna.db")
    start = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        run = client.create_run(experiment).info.run_id
        client.log_param(run, "lr", lr)
        for step in range(1, REPORTS + 1):
            client.log_metric(run, "val_loss", lr / step, step=step)
        client.set_terminated(run)
        study.tell(trial, lr / REPORTS)
    return time.perf_counter() - start


def tiny(config: dict[str, Any]) -> None:
    """The plain Ray Tune trainable: report 10 times."""
    from ray import tune

    for step in range(1, REPORTS + 1):
        tune.report({"val_loss": config["lr"] / step})


def ray_tune(trials: int, folder: Path, reuse: bool) -> float:
    """Plain Ray Tune: OptunaSearch + ASHA + MLflowLoggerCallback."""
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    name = f"ray-{int(reuse)}"
    tuner = tune.Tuner(
        tiny,
        param_space={"lr": tune.loguniform(1e-4, 1.0)},
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(metric="val_loss", mode="min", seed=0),
            scheduler=ASHAScheduler(metric="val_loss", mode="min", max_t=REPORTS),
            num_samples=trials,
            reuse_actors=reuse,
        ),
        run_config=tune.RunConfig(
            storage_path=str(folder / "ray"),
            name=name,
            verbose=0,
            callbacks=[MLflowLoggerCallback(tracking_uri=f"sqlite:///{folder}/ray.db", experiment_name=name)],
        ),
    )
    start = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - start


def ours(trials: int, folder: Path, name: str = "ours", report_every_s: float = 10.0) -> tuple[float, Any, Path]:
    """Our engine with full recording on the toy trainer; returns wall, result and trace folder."""
    from sweeps.runner import run_sweep
    from sweeps.spec import validate_spec

    traces = folder / f"{name}-traces"
    traces.mkdir()
    raw = {
        "name": name,
        "trainer": "benchmarks.overhead:TimedToy",
        "metric": {"name": "val_loss", "mode": "min"},
        "budget": {"trials": trials, "epochs": REPORTS},
        "asha": {"grace_period": REPORTS},  # like plain Tune's ASHA here: nothing is cut before the end
        "params": {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}},
        "fixed": {"steps_per_epoch": 1, "timing_dir": str(traces)},
        "record": {"report_every_s": report_every_s},
    }
    spec = validate_spec(raw, "<benchmark>", [])
    start = time.perf_counter()
    result = run_sweep(spec, root=folder / "sweeps", tracking_uri=f"sqlite:///{folder}/ours.db", stream=io.StringIO())
    return time.perf_counter() - start, result, traces


def sampling_ms(result: Any, around: int, width: int = 10) -> float:
    """Median milliseconds the sampler took to suggest trials ``around - width .. around``."""
    records = sorted(result.state.trials.values(), key=lambda r: r.number)
    window = [r.sampling_s for r in records if around - width <= r.number + 1 <= around]
    return statistics.median(window) * 1000 if window else math.nan


def big_run(trials: int, folder: Path) -> None:
    """N trials of ours: driver memory and time per trial, first and last hundred; sampler cost."""
    sampler = RssSampler()
    wall, result, traces = ours(trials, folder, "ours-big")
    sampler.done.set()
    ends = trial_ends(traces)
    first, last = ends[:101], ends[-101:]
    at_100 = sampler.peak(0.0, first[-1])
    late = sampler.peak(last[0], last[-1])
    print(f"\n{trials} trials of ours: {wall:.0f} s ({wall / trials:.3f} s/trial)")
    print(f"{'':<22} {'s/trial':>8} {'driver peak RSS MB':>19}")
    print(f"{'trials 1-100':<22} {(first[-1] - first[0]) / 100:>8.3f} {at_100:>19.0f}")
    print(f"{f'trials {trials - 99}-{trials}':<22} {(last[-1] - last[0]) / 100:>8.3f} {late:>19.0f}")
    print(f"driver peak RSS growth from trial 100 to {trials}: {sampler.peak(first[-1], math.inf) - at_100:.0f} MB")
    near_100, near_end = sampling_ms(result, 100), sampling_ms(result, trials)
    slowest = max(r.sampling_s for r in result.state.trials.values()) * 1000
    print(
        f"sampler (TPE) median suggest time: trials 91-100 {near_100:.1f} ms, trials {trials - 9}-{trials} "
        f"{near_end:.1f} ms ({near_end / near_100:.1f}x); slowest {slowest:.0f} ms"
    )
    gaps = slot_gaps(traces)
    print(f"slot idle between trials: median {statistics.median(gaps):.3f} s, max {max(gaps):.3f} s")


def main() -> None:
    """Run each setup and print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--big", type=int, default=0, help="also run this many trials of ours (e.g. 1000)")
    parser.add_argument("--every-epoch", action="store_true", help="also ours with record.report_every_s: 0")
    args = parser.parse_args()
    from sweeps.runner import start_ray

    folder = Path(tempfile.mkdtemp(prefix="overhead-bench-"))
    rows = [("floor (optuna+mlflow)", floor(args.trials, folder))]
    start_ray(num_cpus=2, address="local")  # never attach to a cluster another process started here
    plain = {reuse: ray_tune(args.trials, folder, reuse) for reuse in (False, True)}
    rows += [(f"ray-tune reuse_actors={reuse}", wall) for reuse, wall in plain.items()]
    mine, _, traces = ours(args.trials, folder)
    rows.append(("ours (full recording)", mine))
    if args.every_epoch:
        every, _, _ = ours(args.trials, folder, "ours-every-epoch", report_every_s=0.0)
        rows.append(("ours, a report per epoch", every))
    best_plain = min(plain.values())
    print(f"{args.trials} tiny trials, {REPORTS} results each, 2 CPUs")
    print(f"{'setup':<28} {'s/trial':>8} {'results/s':>10} {'vs best ray-tune':>17}")
    for name, wall in rows:
        per = wall / args.trials
        print(f"{name:<28} {per:>8.3f} {args.trials * REPORTS / wall:>10.1f} {wall / best_plain:>16.2f}x")
    gaps = slot_gaps(traces)
    print(f"ours: slot idle between trials: median {statistics.median(gaps):.3f} s, max {max(gaps):.3f} s")
    if args.big:
        big_run(args.big, folder)


if __name__ == "__main__":
    main()
