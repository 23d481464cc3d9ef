"""The Optuna study of a sweep: SQLite in the sweep's folder, named after the sweep."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

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


def record_trial(
    trial: optuna.Trial, values: Iterable[tuple[int, float]] = (), attrs: dict[str, Any] | None = None
) -> None:
    """Intermediate values (``(step, value)``) and user attributes of a running trial, in one commit.

    What ``Trial.report`` and ``Trial.set_user_attr`` write, one commit each (about 3 ms apiece on
    SQLite, a few dozen per trial in the driver). On Optuna's RDB storage it is written in one
    transaction through the storage's own per-row writers; on any other storage, or an Optuna
    without them, through the public calls. A step already reported is skipped, as ``report`` does.
    """
    reported = trial._cached_frozen_trial.intermediate_values
    fresh = [(int(step), float(value)) for step, value in values if int(step) not in reported]
    attrs = attrs or {}
    backend = _rdb_backend(trial.study)
    if backend is None:
        _one_by_one(trial, fresh, attrs)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from sqlalchemy.exc import IntegrityError

    try:
        with _create_scoped_session(backend.scoped_session) as session:
            for step, value in fresh:
                backend._set_trial_intermediate_value_without_commit(session, trial._trial_id, step, value)
            for key, value in attrs.items():
                model = models.TrialUserAttributeModel
                backend._set_trial_attr_without_commit(session, model, trial._trial_id, key, value)
    except IntegrityError:  # another writer got there first (rolled back): one row at a time, as Optuna does
        _one_by_one(trial, fresh, attrs)
        return
    cached = trial._cached_frozen_trial  # as report and set_user_attr keep it
    cached.intermediate_values.update(fresh)
    cached.user_attrs.update(attrs)


def _one_by_one(trial: optuna.Trial, values: list[tuple[int, float]], attrs: dict[str, Any]) -> None:
    for step, value in values:
        trial.report(value, step=step)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def _rdb_backend(study: optuna.Study) -> Any:
    """The study's RDB storage if this Optuna has the writers :func:`record_trial` uses, else None."""
    storage = getattr(study, "_storage", None)
    backend = getattr(storage, "_backend", storage)
    needed = ("scoped_session", "_set_trial_intermediate_value_without_commit", "_set_trial_attr_without_commit")
    if not isinstance(backend, optuna.storages.RDBStorage) or not all(hasattr(backend, n) for n in needed):
        return None
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session  # noqa: F401
    except ImportError:
        return None
    return backend if hasattr(models, "TrialUserAttributeModel") else None
