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

    What ``Trial.report`` and ``Trial.set_user_attr`` write, one commit and a few queries each
    (about 3 ms apiece on SQLite, a dozen or more per trial in the driver). On Optuna's RDB storage
    it is one transaction: the values inserted as rows of Optuna's table in one statement, the
    attributes through the storage's own writer. On any other storage, or an Optuna without those
    parts, through the public calls. A step already reported is skipped, as ``report`` does.
    """
    reported = trial._cached_frozen_trial.intermediate_values
    fresh = [(int(step), float(value)) for step, value in values if int(step) not in reported]
    attrs = attrs or {}
    if not fresh and not attrs:
        return
    backend = _rdb_backend(trial.study)
    if backend is None:
        _one_by_one(trial, fresh, attrs)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from sqlalchemy.exc import IntegrityError

    try:
        with _create_scoped_session(backend.scoped_session) as session:
            _add_values(backend, session, trial._trial_id, fresh)
            for key, value in attrs.items():
                model = models.TrialUserAttributeModel
                backend._set_trial_attr_without_commit(session, model, trial._trial_id, key, value)
    except IntegrityError:  # another writer got there first (rolled back): one row at a time, as Optuna does
        _one_by_one(trial, fresh, attrs)
        return
    cached = trial._cached_frozen_trial  # as report and set_user_attr keep it
    cached.intermediate_values.update(fresh)
    cached.user_attrs.update(attrs)


def _add_values(backend: Any, session: Any, trial_id: int, values: list[tuple[int, float]]) -> None:
    """Insert intermediate values as rows of Optuna's table in one statement; update steps it has."""
    if not values:
        return
    from optuna.storages._rdb import models

    model = models.TrialIntermediateValueModel
    trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
    backend.check_trial_is_updatable(trial_id, trial.state)
    steps = [step for step, _ in values]
    stored = {row[0] for row in session.query(model.step).filter(model.trial_id == trial_id, model.step.in_(steps))}
    rows = []
    for step, value in values:
        if step in stored:
            backend._set_trial_intermediate_value_without_commit(session, trial_id, step, value)
            continue
        number, kind = model.intermediate_value_to_stored_repr(value)
        rows.append(model(trial_id=trial_id, step=step, intermediate_value=number, intermediate_value_type=kind))
    session.add_all(rows)


def _one_by_one(trial: optuna.Trial, values: list[tuple[int, float]], attrs: dict[str, Any]) -> None:
    for step, value in values:
        trial.report(value, step=step)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def _rdb_backend(study: optuna.Study) -> Any:
    """The study's RDB storage if this Optuna has the writers :func:`record_trial` uses, else None."""
    storage = getattr(study, "_storage", None)
    backend = getattr(storage, "_backend", storage)
    needed = (
        "scoped_session",
        "check_trial_is_updatable",
        "_set_trial_intermediate_value_without_commit",
        "_set_trial_attr_without_commit",
    )
    if not isinstance(backend, optuna.storages.RDBStorage) or not all(hasattr(backend, n) for n in needed):
        return None
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session  # noqa: F401
    except ImportError:
        return None
    wanted = ("TrialModel", "TrialUserAttributeModel", "TrialIntermediateValueModel")
    return backend if all(hasattr(models, name) for name in wanted) else None
