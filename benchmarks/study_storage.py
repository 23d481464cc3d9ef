"""The driver's Optuna work per trial on each study storage, side by side in one run.

What the searcher does for each trial, with the engine's sampler (TPE, multivariate, grouped,
constant liar) on one float parameter and two trials running at a time: ``ask`` and the
suggestion, the trial's attributes (``record_trial``), then, when it ends, its 10 epoch values,
its final attributes and ``tell``. Compared: Optuna's RDB storage on SQLite in WAL mode (the
engine's study before the journal), the journal file the engine uses now, and in-memory storage
(nothing kept: the floor). Prints milliseconds per trial for each part and in all.

Run: .venv/bin/python -m benchmarks.study_storage [--trials 200] [--epochs 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna

from sweeps.store.sqlite_wal import use_wal
from sweeps.store.study import record_trial

PARTS = ("ask + suggest", "attrs", "values + tell")


def sampler() -> optuna.samplers.BaseSampler:
    """The engine's TPE settings (``sweeps.study.make_sampler``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=0, n_startup_trials=10, multivariate=True, group=True, constant_liar=True
        )


def per_trial_ms(storage: optuna.storages.BaseStorage | str, trials: int, epochs: int) -> dict[str, float]:
    """Milliseconds per trial spent in each part of the driver's Optuna work."""
    study = optuna.create_study(storage=storage, sampler=sampler())
    spent = dict.fromkeys(PARTS, 0.0)
    running: list[tuple[optuna.Trial, float]] = []

    def timed(part: str, call: Callable[..., object], *args: object) -> None:
        start = time.perf_counter()
        call(*args)
        spent[part] += time.perf_counter() - start

    def end(trial: optuna.Trial, lr: float) -> None:
        values = [(epoch, lr / epoch) for epoch in range(1, epochs + 1)]
        record_trial(trial, values, {"status": "completed", "steps": epochs, "skipped_share": 0.0})
        study.tell(trial, lr / epochs)

    for _ in range(trials):
        start = time.perf_counter()
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        spent["ask + suggest"] += time.perf_counter() - start
        timed("attrs", record_trial, trial, (), {"ray_trial_id": "x", "mlflow_run_id": "y", "config": {"lr": lr}})
        running.append((trial, lr))
        if len(running) == 2:  # two trial slots: the older one ends as the next is asked
            timed("values + tell", end, *running.pop(0))
    return {part: seconds / trials * 1000 for part, seconds in spent.items()}


def main() -> None:
    """Run each storage and print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="study-storage-bench-"))
    use_wal()
    from optuna.storages import InMemoryStorage, JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storages: dict[str, Callable[[], optuna.storages.BaseStorage | str]] = {
        "SQLite (RDB, WAL)": lambda: f"sqlite:///{folder}/optuna.db",
        "journal file (ours)": lambda: JournalStorage(JournalFileBackend(str(folder / "optuna-journal.log"))),
        "in memory (floor)": InMemoryStorage,
    }
    print(f"driver's Optuna work, {args.trials} trials, {args.epochs} epoch values each, ms per trial")
    print(f"{'storage':<22}" + "".join(f"{part:>16}" for part in PARTS) + f"{'total':>10}")
    for name, make in storages.items():
        ms = per_trial_ms(make(), args.trials, args.epochs)
        print(f"{name:<22}" + "".join(f"{ms[part]:>16.2f}" for part in PARTS) + f"{sum(ms.values()):>10.2f}")


if __name__ == "__main__":
    main()
