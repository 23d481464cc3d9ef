"""Engine overhead on tiny trials, side by side in one run.

Each trial builds the toy trainer and runs its 10 one-step epochs, reporting each (10 results).
Compared:

- ``floor``: plain Optuna + MLflow in one process (ask, 10 ``log_metric``, tell);
- ``ray-tune``: plain Ray Tune as a user sets it up for the same trainer (OptunaSearch + ASHA +
  MLflowLoggerCallback), with ``reuse_actors`` off and on (the better one counts);
- ``ours``: our engine with full recording (MLflow parent/child runs, step logging, artifacts,
  checkpoints, Optuna study on disk, the report at the end).

Every setup's MLflow store is created before its clock starts, as a user's ``mlflow.db`` exists
after the first sweep. Each setup runs twice, with ``--small`` and with ``--trials`` trials: the
difference gives what one more trial costs (the slope) apart from what a sweep costs once (start,
report: the intercept). Printed per setup: seconds per trial at ``--trials`` and against the
better plain Ray Tune, seconds per extra trial and against it, the fixed cost, when the first
trainer was built, and the driver's (this process's) CPU seconds per extra trial. With
``--repeat R`` every setup runs R times at both sizes, interleaved; the figures are from the
median walls, and the slope ratio is also printed repeat by repeat. Plain
Tune with ``reuse_actors=False`` runs only at ``--small`` (first repeat) unless ``--reuse-off-full``.
For ours also the idle gap of each trial slot between one trial's last epoch and the next trial's
start (median and max). Before any of it, each setup runs 2 trials unmeasured (first-use costs).
``--big N`` also runs N trials of ours and prints the driver's peak memory
and seconds per trial over the first and last hundred, and the sampler's time to suggest a trial
around trial 100 and trial N.

Run: .venv/bin/python -m benchmarks.overhead [--trials 40] [--small 10] [--repeat 1] [--big 0] [--every-epoch]
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

from benchmarks.plain_env import plain_tune_env
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


def trial_times(folder: Path, event: str = "end") -> list[float]:
    """Wall times at which trainers were built (``start``) or ended their last epoch (``end``), sorted."""
    return sorted(
        json.loads(line)["t"]
        for path in folder.glob("*.jsonl")
        for line in path.read_text().splitlines()
        if json.loads(line)["event"] == event
    )


@dataclass
class Timed:
    """One setup's run: wall seconds, when it began, its trainers' timing folder, the driver's CPU seconds."""

    wall: float
    begun: float
    traces: Path | None = None
    cpu: float = math.nan

    def first_trainer(self) -> float:
        """Seconds from the start to the first trainer built (NaN without a timing folder)."""
        return trial_times(self.traces, "start")[0] - self.begun if self.traces is not None else math.nan


def cpu_seconds() -> float:
    """User and system CPU seconds of this process so far."""
    times = os.times()
    return times.user + times.system


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


def floor(trials: int, folder: Path) -> Timed:
    """Plain Optuna + MLflow in-process: seconds for ``trials`` trials."""
    import mlflow
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder.mkdir(parents=True)
    client = mlflow.MlflowClient(f"sqlite:///{folder}/floor.db")
    experiment = client.create_experiment("floor")
    study = optuna.create_study(storage=f"sqlite:///{folder}/floor-optuna.db")
    begun, start, cpu = time.time(), time.perf_counter(), cpu_seconds()
    for _ in range(trials):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        run = client.create_run(experiment).info.run_id
        client.log_param(run, "lr", lr)
        for step in range(1, REPORTS + 1):
            client.log_metric(run, "val_loss", lr / step, step=step)
        client.set_terminated(run)
        study.tell(trial, lr / REPORTS)
    return Timed(time.perf_counter() - start, begun, cpu=cpu_seconds() - cpu)


def tiny(config: dict[str, Any]) -> None:
    """The plain Ray Tune trainable: the same trainer as ours, reporting each of its 10 epochs."""
    from ray import tune

    trainer = TimedToy(TimedConfig(lr=config["lr"], steps_per_epoch=1, timing_dir=config["timing_dir"]))
    for _ in range(REPORTS):
        trainer.train_epoch()
        tune.report(trainer.validate())


def ready_db(uri: str) -> str:
    """Create the MLflow store at ``uri`` now, as a user's ``mlflow.db`` exists after the first sweep."""
    import mlflow

    mlflow.MlflowClient(uri).search_experiments()
    return uri


def ray_tune(trials: int, folder: Path, reuse: bool) -> Timed:
    """Plain Ray Tune: OptunaSearch + ASHA + MLflowLoggerCallback; returns wall and trace folder."""
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    name = f"ray-{int(reuse)}"
    traces = folder / f"{name}-traces"
    traces.mkdir(parents=True)
    uri = ready_db(f"sqlite:///{folder}/{name}.db")
    tuner = tune.Tuner(
        tiny,
        param_space={"lr": tune.loguniform(1e-4, 1.0), "timing_dir": str(traces)},
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
            callbacks=[MLflowLoggerCallback(tracking_uri=uri, experiment_name=name)],
        ),
    )
    begun, start, cpu = time.time(), time.perf_counter(), cpu_seconds()
    with plain_tune_env():  # Tune's default loggers on, as in a user's plain Tune
        tuner.fit()
    return Timed(time.perf_counter() - start, begun, traces, cpu_seconds() - cpu)


def ours(trials: int, folder: Path, name: str = "ours", report_every_s: float = 10.0) -> tuple[Timed, Any]:
    """Our engine with full recording on the toy trainer; returns wall, result and trace folder."""
    from sweeps.engine.runner import run_sweep
    from sweeps.spec.sweep_spec import validate_spec

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
    uri = ready_db(f"sqlite:///{folder}/{name}.db")
    begun, start, cpu = time.time(), time.perf_counter(), cpu_seconds()
    result = run_sweep(spec, root=folder / "sweeps", tracking_uri=uri, stream=io.StringIO())
    return Timed(time.perf_counter() - start, begun, traces, cpu_seconds() - cpu), result


def sampling_ms(result: Any, around: int, width: int = 10) -> float:
    """Median milliseconds the sampler took to suggest trials ``around - width .. around``."""
    records = sorted(result.state.trials.values(), key=lambda r: r.number)
    window = [r.sampling_s for r in records if around - width <= r.number + 1 <= around]
    return statistics.median(window) * 1000 if window else math.nan


def big_run(trials: int, folder: Path) -> None:
    """N trials of ours: driver memory and time per trial, first and last hundred; sampler cost."""
    sampler = RssSampler()
    timed, result = ours(trials, folder, "ours-big")
    wall, traces = timed.wall, timed.traces
    assert traces is not None
    sampler.done.set()
    ends = trial_times(traces)
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


@dataclass
class Setup:
    """One setup's runs at the small and the full number of trials, one of each per repeat."""

    name: str
    small: list[Timed]
    full: list[Timed]

    def _wall(self, runs: list[Timed], repeat: int | None) -> float:
        if not runs:
            return math.nan
        return runs[repeat].wall if repeat is not None else statistics.median(r.wall for r in runs)

    def slope(self, small: int, trials: int, repeat: int | None = None) -> float:
        """Seconds each trial beyond ``small`` added: the per-trial cost without the per-sweep one.

        From the median walls over the repeats, or from one repeat's pair of runs.
        """
        return (self._wall(self.full, repeat) - self._wall(self.small, repeat)) / (trials - small)

    def cpu_slope(self, small: int, trials: int) -> float:
        """The driver's CPU seconds each trial beyond ``small`` added (from the median CPU seconds)."""
        if not self.full or not self.small:
            return math.nan
        full, few = (statistics.median(r.cpu for r in runs) for runs in (self.full, self.small))
        return (full - few) / (trials - small)

    def fixed(self, small: int, trials: int) -> float:
        """What the sweep costs besides its trials (start and end): the line's intercept."""
        return self._wall(self.small, None) - small * self.slope(small, trials)

    def per_trial(self, trials: int) -> float:
        """Median seconds per trial of the full-size runs."""
        return self._wall(self.full, None) / trials


def _cell(value: float, digits: int = 3, suffix: str = "") -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}{suffix}"


def print_table(setups: list[Setup], small: int, trials: int) -> None:
    """Seconds per trial at ``trials``, per extra trial (slope), fixed cost, first trainer, ratios.

    Also the driver's CPU seconds per extra trial: near the slope, the driver is what limits it.
    """
    plain = [s for s in setups if s.name.startswith("ray-tune") and s.full]
    best_wall = min(plain, key=lambda s: s.per_trial(trials))
    best_slope = min(plain, key=lambda s: s.slope(small, trials))
    repeats = len(best_slope.full)
    print(f"tiny trials, {REPORTS} results each, 2 CPUs; each setup run with {small} and with {trials} trials", end="")
    print(f", {repeats} times (medians)" if repeats > 1 else "")
    print(
        f"{'setup':<28} {f's/trial@{trials}':>12} {'vs best':>8} {'s/extra trial':>14} {'vs best':>8} "
        f"{'fixed s':>8} {f'first trainer@{trials}':>18} {'driver CPU s/extra':>19}"
    )
    for setup in setups:
        per = setup.per_trial(trials)
        first = statistics.median(f.first_trainer() for f in setup.full) if setup.full else math.nan
        slope, fixed = setup.slope(small, trials), setup.fixed(small, trials)
        print(
            f"{setup.name:<28} {_cell(per):>12} {_cell(per / best_wall.per_trial(trials), 2, 'x'):>8} "
            f"{_cell(slope):>14} {_cell(slope / best_slope.slope(small, trials), 2, 'x'):>8} {_cell(fixed, 1):>8} "
            f"{_cell(first, 2):>18} {_cell(setup.cpu_slope(small, trials)):>19}"
        )
        if not setup.full:
            wall = statistics.median(r.wall for r in setup.small)
            print(f"{'':<28} (run with {small} trials only: {wall / small:.3f} s/trial)")
    if repeats > 1:
        for setup in setups:
            walls = "; ".join(
                f"{n} trials " + ", ".join(f"{r.wall:.1f}" for r in runs)
                for n, runs in ((small, setup.small), (trials, setup.full))
                if runs
            )
            print(f"{setup.name}: wall s by repeat: {walls}")
        for setup in setups:
            if setup.full and not setup.name.startswith("ray-tune"):
                ratios = [setup.slope(small, trials, i) / best_slope.slope(small, trials, i) for i in range(repeats)]
                shown = ", ".join(f"{r:.2f}x" for r in ratios)
                print(f"{setup.name}: s/extra trial against {best_slope.name}, repeat by repeat: {shown}")


def main() -> None:
    """Run each setup at two sizes and print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--small", type=int, default=10, help="the smaller run of each setup, for the slope")
    parser.add_argument("--repeat", type=int, default=1, help="run every setup at both sizes this many times")
    parser.add_argument("--big", type=int, default=0, help="also run this many trials of ours (e.g. 1000)")
    parser.add_argument("--every-epoch", action="store_true", help="also ours with record.report_every_s: 0")
    parser.add_argument(
        "--reuse-off-full", action="store_true", help="run plain Tune with reuse_actors=False at --trials too (slow)"
    )
    args = parser.parse_args()
    if not 0 < args.small < args.trials:
        parser.error("--small must be above 0 and below --trials")
    from sweeps.engine.cluster import start_ray

    folder = Path(tempfile.mkdtemp(prefix="overhead-bench-"))
    sizes = (args.small, args.trials)
    names = ["floor (optuna+mlflow)", "ray-tune reuse_actors=False", "ray-tune reuse_actors=True"]
    names += ["ours (full recording)"] + (["ours, a report per epoch"] if args.every_epoch else [])
    setups = {name: Setup(name, [], []) for name in names}

    def add(name: str, n: int, timed: Timed) -> None:
        setup = setups[name]
        (setup.small if n == args.small else setup.full).append(timed)

    start_ray(num_cpus=2, address="local")  # never attach to a cluster another process started here
    # Unmeasured: each setup's first run in a process pays imports and first-use costs once (about
    # 2 s for ours), which would otherwise land in the first repeat's small run and bend its slope.
    floor(2, folder / "warm-floor")
    ray_tune(2, folder / "warm-ray", reuse=True)
    ours(2, folder, "warm-ours")
    for repeat in range(args.repeat):  # interleaved, so a slow spell of the machine hits every setup
        for n in sizes:
            add(names[0], n, floor(n, folder / f"floor-{repeat}-{n}"))
            off = (n == args.small and repeat == 0) or args.reuse_off_full
            for reuse in (False, True) if off else (True,):
                add(f"ray-tune reuse_actors={reuse}", n, ray_tune(n, folder / f"ray-{repeat}-{n}-{reuse}", reuse))
            add(names[3], n, ours(n, folder, f"ours-{repeat}-{n}")[0])
            if args.every_epoch:
                add(names[4], n, ours(n, folder, f"ours-every-epoch-{repeat}-{n}", report_every_s=0.0)[0])
    mine = setups[names[3]]
    print_table(list(setups.values()), *sizes)
    gaps = [g for timed in mine.full if timed.traces is not None for g in slot_gaps(timed.traces)]
    print(f"ours: slot idle between trials: median {statistics.median(gaps):.3f} s, max {max(gaps):.3f} s")
    if args.big:
        big_run(args.big, folder)


if __name__ == "__main__":
    main()
