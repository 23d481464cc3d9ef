"""The Optuna study of a sweep: SQLite in the sweep's folder, named after the sweep."""

from __future__ import annotations

import warnings

import optuna

from sweeps.spec import SweepSpec
from sweeps.sqlite import use_wal
from sweeps.store import SweepDir


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """TPE (grouped and multivariate, for conditional spaces; constant liar for parallel trials)."""
    if spec.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=spec.seed,
            n_startup_trials=spec.search.n_startup_trials,
            multivariate=True,
            group=True,
            constant_liar=True,
        )


def create_study(sweep: SweepDir, spec: SweepSpec) -> optuna.Study:
    """Create the sweep's study in ``<sweep>/optuna.db``."""
    use_wal()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=sweep.storage_uri,
        study_name=sweep.name,
        direction="minimize" if spec.mode == "min" else "maximize",
        sampler=make_sampler(spec),
    )
    study.set_user_attr("metric", spec.metric)
    study.set_user_attr("trainer", spec.trainer)
    return study


def load_study(sweep: SweepDir) -> optuna.Study:
    """Open a sweep's study for reading (export, report)."""
    use_wal()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=sweep.name, storage=sweep.storage_uri)
