"""Engine overhead on tiny trials, side by side in one run.

Each trial does almost nothing and reports 10 times (10 "epochs"). Compared:

- ``floor``: plain Optuna + MLflow in one process (ask, 10 ``log_metric``, tell);
- ``ray-tune``: plain Ray Tune as a user sets it up (OptunaSearch + ASHA + MLflowLoggerCallback),
  with ``reuse_actors`` off and on (the better one counts);
- ``ours``: our engine with full recording (MLflow parent/child runs, step logging, artifacts,
  checkpoints, Optuna study on disk).

Prints seconds per trial, results per second and the ratios; ``--big N`` also runs N trials of
ours and prints the driver's peak memory and time per trial for the first and last hundred.

Run: .venv/bin/python -m benchmarks.overhead [--trials 40] [--big 0]
"""

from __future__ import annotations

import argparse
import io
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

REPORTS = 10


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


def ours(trials: int, folder: Path, name: str = "ours") -> tuple[float, Any]:
    """Our engine with full recording on the toy trainer."""
    from sweeps.runner import run_sweep
    from sweeps.spec import validate_spec

    raw = {
        "name": name,
        "trainer": "tests.toy_trainer:ToyTrainer",
        "metric": {"name": "val_loss", "mode": "min"},
        "budget": {"trials": trials, "epochs": REPORTS},
        "asha": {"grace_period": REPORTS},  # like plain Tune's ASHA here: nothing is cut before the end
        "params": {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}},
        "fixed": {"steps_per_epoch": 1},
    }
    spec = validate_spec(raw, "<benchmark>", [])
    start = time.perf_counter()
    result = run_sweep(spec, root=folder / "sweeps", tracking_uri=f"sqlite:///{folder}/ours.db", stream=io.StringIO())
    return time.perf_counter() - start, result


def main() -> None:
    """Run each setup and print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--big", type=int, default=0, help="also run this many trials of ours (e.g. 1000)")
    args = parser.parse_args()
    from sweeps.runner import start_ray

    folder = Path(tempfile.mkdtemp(prefix="overhead-bench-"))
    rows = [("floor (optuna+mlflow)", floor(args.trials, folder))]
    start_ray(num_cpus=2, address="local")  # never attach to a cluster another process started here
    plain = {reuse: ray_tune(args.trials, folder, reuse) for reuse in (False, True)}
    rows += [(f"ray-tune reuse_actors={reuse}", wall) for reuse, wall in plain.items()]
    mine, _ = ours(args.trials, folder)
    rows.append(("ours (full recording)", mine))
    best_plain = min(plain.values())
    print(f"{args.trials} tiny trials, {REPORTS} results each, 2 CPUs")
    print(f"{'setup':<28} {'s/trial':>8} {'results/s':>10} {'vs best ray-tune':>17}")
    for name, wall in rows:
        per = wall / args.trials
        print(f"{name:<28} {per:>8.3f} {args.trials * REPORTS / wall:>10.1f} {wall / best_plain:>16.2f}x")
    if args.big:
        wall, _ = ours(args.big, folder, "ours-big")
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        per = wall / args.big
        print(f"\n{args.big} trials of ours: {wall:.0f} s ({per:.3f} s/trial), driver peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
