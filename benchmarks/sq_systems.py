"""One search system of the search-quality benchmark, run until the benchmark kills it.

``python -m benchmarks.sq_systems '<json>'`` with ``{"system", "task", "seed", "trace_dir", "work",
"budget_s"}``: the system searches ``task``'s space with the traced trainers of
``benchmarks.sq_trainer`` with the task's workers (2 trials at once on 2 CPUs; 4 sharing a GPU on
the GPU task) for ever, or until its own wall-clock stop; the
parent (``benchmarks/search_quality.py``) stops it at the deadline and reads the traces. Each system
is set up as its own documentation sets it up, with its defaults; only ``max_t``/epochs, the metric
and the task's workers are given. The peers' imports (Syne Tune, SMAC, hpbandster) are found only in the
benchmark's own virtualenv.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from benchmarks.search_quality import TASKS, Task

MANY = 100_000  # "trials": every system runs until it is stopped


def _epochs(task: Task, config: dict[str, Any], epochs: int | None = None) -> float:
    """Train ``config`` for ``epochs`` (all the task's by default) and return the last metric."""
    from benchmarks.sq_trainer import make_trainer

    trainer = make_trainer(task.name, config)
    value = math.nan
    for _ in range(epochs or task.epochs):
        trainer.train_epoch()
        value = trainer.validate()[task.metric]
    return value


def run_ours(
    task: Task, seed: int, trace_dir: str, work: Path, budget_s: float, overrides: dict[str, Any] | None = None
) -> None:
    """Our engine with its defaults (or ``overrides``, dotted spec keys: a variant), through the public API."""
    import sweeps

    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    # the budget a user with that much time gives it (budget.time counts from the sweep's start, after Ray's)
    budget = {"trials": MANY, "epochs": task.epochs, "time": budget_s}
    raw = task.spec(f"sq-{task.name}-{seed}", seed, budget, trace_dir=trace_dir)
    for dotted, value in (overrides or {}).items():
        *path, last = dotted.split(".")
        section = raw
        for key in path:
            section = section.setdefault(key, {})
        section[last] = value
    spec_file = work / "spec.yaml"
    import yaml

    spec_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = sweeps.load_spec(str(spec_file))
    uri = f"sqlite:///{work}/mlflow.db"
    # as `sweeps run --cpus 2` does: Ray starts inside, while the store opens
    sweeps.run_sweep(
        spec, root=work / "runs", tracking_uri=uri, stream=io.StringIO(), cpus=task.workers, address="local"
    )


def _space(task: Task, lib: Any) -> dict[str, Any]:
    """The task's parameters in a library with ``choice``, ``loguniform`` and ``uniform``: Ray Tune, Syne Tune."""
    space: dict[str, Any] = {}
    for name, p in task.params.items():
        if "choices" in p:
            space[name] = lib.choice(p["choices"])
        elif p.get("log"):
            space[name] = lib.loguniform(p["low"], p["high"])
        else:
            space[name] = lib.uniform(p["low"], p["high"])
    return space


def _tune(task: Task, seed: int, trace_dir: str, work: Path, search_alg: Any, scheduler: Any, name: str) -> None:
    import ray
    from ray import tune

    from benchmarks.sq_trainer import make_trainer

    def trainable(config: dict[str, Any]) -> None:
        trainer = make_trainer(task.name, {**task.fixed, **task.coerce(config), "trace_dir": trace_dir})
        for _ in range(task.epochs):
            tune.report({**trainer.train_epoch(), **trainer.validate()})

    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    ray.init(num_cpus=task.workers, address="local", include_dashboard=False, log_to_driver=False)
    resources: dict[str, float] = {"cpu": 1.0, "gpu": task.gpus_per_trial} if task.gpus_per_trial else {"cpu": 1.0}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=_space(task, tune),
        tune_config=tune.TuneConfig(
            metric=task.metric,
            mode=task.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=MANY,
            max_concurrent_trials=task.workers,
        ),
        run_config=tune.RunConfig(storage_path=str(work), name=name, verbose=0),
    )
    tuner.fit()


def run_ray_optuna_asha(task: Task, seed: int, trace_dir: str, work: Path, budget_s: float) -> None:
    """Plain Ray Tune as its docs set it up: OptunaSearch (TPE) and ASHA with its defaults."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    _tune(task, seed, trace_dir, work, OptunaSearch(seed=seed), ASHAScheduler(max_t=task.epochs), "plain")


def run_ray_bohb(task: Task, seed: int, trace_dir: str, work: Path, budget_s: float) -> None:
    """Ray Tune's BOHB: TuneBOHB (hpbandster, ConfigSpace) with HyperBandForBOHB."""
    from ray.tune.schedulers import HyperBandForBOHB
    from ray.tune.search.bohb import TuneBOHB

    scheduler = HyperBandForBOHB(time_attr="training_iteration", max_t=task.epochs)
    _tune(task, seed, trace_dir, work, TuneBOHB(seed=seed), scheduler, "bohb")


def _suggest(trial: Any, task: Task) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, p in task.params.items():
        if "choices" in p:
            out[name] = trial.suggest_categorical(name, p["choices"])
        else:
            out[name] = trial.suggest_float(name, p["low"], p["high"], log=bool(p.get("log")))
    return out


def _optuna_parts(task: Task, work: Path, seed: int) -> tuple[Any, Any, Any]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = JournalStorage(JournalFileBackend(str(work / "journal.log")))
    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=task.epochs)
    return storage, sampler, pruner


def run_optuna(task: Task, seed: int, trace_dir: str, work: Path, budget_s: float) -> None:
    """Optuna alone: TPE + HyperbandPruner, the task's workers (processes) on one journal file."""
    import optuna

    storage, sampler, pruner = _optuna_parts(task, work, seed)
    direction: Literal["minimize", "maximize"] = "minimize" if task.mode == "min" else "maximize"
    optuna.create_study(study_name="sq", storage=storage, direction=direction, sampler=sampler, pruner=pruner)
    args = {"system": "optuna_worker", "task": task.name, "seed": seed, "trace_dir": trace_dir, "work": str(work)}
    workers = [
        subprocess.Popen([sys.executable, "-m", "benchmarks.sq_systems", json.dumps({**args, "worker": i})])
        for i in range(task.workers)
    ]
    for worker in workers:
        worker.wait()


def run_optuna_worker(task: Task, seed: int, trace_dir: str, work: Path, worker: int) -> None:
    """One of Optuna's workers."""
    import optuna

    from benchmarks.sq_trainer import make_trainer

    storage, sampler, pruner = _optuna_parts(task, work, seed * 100 + worker)
    study = optuna.load_study(study_name="sq", storage=storage, sampler=sampler, pruner=pruner)

    failures = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal failures
        try:
            trainer = make_trainer(task.name, {**task.fixed, **_suggest(trial, task), "trace_dir": trace_dir})
            value = math.nan
            for epoch in range(1, task.epochs + 1):
                trainer.train_epoch()
                value = trainer.validate()[task.metric]
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            return value
        except Exception as exc:  # Optuna's own warning is silenced above: say why, for the run's log
            if not isinstance(exc, optuna.TrialPruned) and (failures := failures + 1) <= 3:
                print(f"optuna worker {worker}: trial {trial.number} failed: {exc!r}", file=sys.stderr, flush=True)
            raise

    study.optimize(objective, n_trials=MANY, catch=(Exception,))


def run_synetune(task: Task, seed: int, trace_dir: str, work: Path, budget_s: float) -> None:
    """Syne Tune's BOHB (asynchronous Hyperband with a KDE searcher) on its LocalBackend."""
    from syne_tune import StoppingCriterion, Tuner
    from syne_tune import config_space as cs
    from syne_tune.backend import LocalBackend
    from syne_tune.optimizer.baselines import BOHB

    space: dict[str, Any] = {"task": task.name, "trace_dir": trace_dir, **_space(task, cs)}
    scheduler = BOHB(
        space,
        metric=task.metric,
        time_attr="epoch",
        max_t=task.epochs,
        do_minimize=task.mode == "min",
        random_seed=seed,
    )
    entry = Path(__file__).with_name("sq_synetune_entry.py")
    os.environ["SYNETUNE_FOLDER"] = str(work)
    tuner = Tuner(
        trial_backend=LocalBackend(entry_point=str(entry)),
        scheduler=scheduler,
        stop_criterion=StoppingCriterion(max_wallclock_time=budget_s),
        n_workers=task.workers,
        tuner_name=f"sq-{task.name}-{seed}",
        save_tuner=False,
    )
    tuner.run()


def run_smac(task: Task, seed: int, trace_dir: str, work: Path, budget_s: float) -> None:
    """SMAC3's multi-fidelity facade (random forest + Hyperband), dask workers."""
    from ConfigSpace import Categorical, ConfigurationSpace, Float
    from smac import MultiFidelityFacade, Scenario

    space = ConfigurationSpace(seed=seed)
    for name, p in task.params.items():
        if "choices" in p:
            space.add(Categorical(name, [str(c) for c in p["choices"]]))
        else:
            space.add(Float(name, (p["low"], p["high"]), log=bool(p.get("log"))))
    sign = 1.0 if task.mode == "min" else -1.0

    def train(config: Any, seed: int = 0, budget: float = 1.0) -> float:
        value = _epochs(task, {**task.fixed, **task.coerce(dict(config)), "trace_dir": trace_dir}, round(budget))
        if not math.isfinite(value):
            raise ValueError(f"{task.metric} is not finite")
        return sign * value

    scenario = Scenario(
        space,
        deterministic=True,
        n_trials=MANY,
        walltime_limit=budget_s,
        min_budget=1,
        max_budget=task.epochs,
        n_workers=task.workers,
        seed=seed,
        output_directory=work / "smac",
    )
    intensifier = MultiFidelityFacade.get_intensifier(scenario)
    MultiFidelityFacade(scenario, train, intensifier=intensifier, overwrite=True).optimize()


RUNNERS = {
    "ours": run_ours,
    "ray_optuna_asha": run_ray_optuna_asha,
    "optuna": run_optuna,
    "ray_bohb": run_ray_bohb,
    "synetune": run_synetune,
    "smac": run_smac,
}


def main() -> None:
    """Run the system named in the JSON argument."""
    args = json.loads(sys.argv[1])
    task = TASKS[args["task"]]
    work = Path(args["work"])
    if args["system"] == "optuna_worker":
        run_optuna_worker(task, args["seed"], args["trace_dir"], work, args["worker"])
        return
    if args["system"].startswith("ours-"):  # a variant of ours: --variant in search_quality
        run_ours(task, args["seed"], args["trace_dir"], work, args["budget_s"], args.get("overrides"))
        return
    RUNNERS[args["system"]](task, args["seed"], args["trace_dir"], work, args["budget_s"])


if __name__ == "__main__":
    main()
