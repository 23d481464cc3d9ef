"""The Optuna study of a sweep: a journal file in the sweep's folder, named after the sweep.

Optuna's ``JournalStorage`` on a ``JournalFileBackend``: each write is one JSON line appended to
``<sweep>/optuna-journal.log`` (flushed to disk before the call returns), and reads are served from
the log replayed in memory. The driver asks, reports and tells for every trial; on SQLite
(Optuna's RDB storage) each of those re-read the running trials through SQLAlchemy: 48 ms of the
driver's time per trial here against 6.5 ms on the journal (``benchmarks/study_storage.py``).
``optuna-dashboard <file>`` and ``optuna ... --storage <file>`` read it. A sweep made before the
journal keeps its SQLite ``optuna.db``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import optuna

from sweeps.spec import SweepSpec
from sweeps.sqlite import use_wal
from sweeps.store import SweepDir, SweepStoreError


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


def open_storage(sweep: SweepDir) -> optuna.storages.BaseStorage | str:
    """The sweep's study storage: its journal (created if missing), or a SQLite URL for an older sweep."""
    if sweep.optuna_db.is_file():
        use_wal()
        return sweep.storage_location
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(sweep.optuna_journal)))


def create_study(sweep: SweepDir, spec: SweepSpec) -> optuna.Study:
    """Create the sweep's study in ``<sweep>/optuna-journal.log``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=open_storage(sweep),
        study_name=sweep.name,
        direction="minimize" if spec.mode == "min" else "maximize",
        sampler=make_sampler(spec),
    )
    study.set_user_attr("metric", spec.metric)
    study.set_user_attr("trainer", spec.trainer)
    return study


def load_study(sweep: SweepDir, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """Open a sweep's study (export, report, resume)."""
    if not sweep.optuna_db.is_file() and not sweep.optuna_journal.is_file():
        raise SweepStoreError(f"no Optuna study in {sweep.path}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=sweep.name, storage=open_storage(sweep), sampler=sampler)


def record_trial(
    trial: optuna.Trial, values: Iterable[tuple[int, float]] = (), attrs: dict[str, Any] | None = None
) -> None:
    """Intermediate values (``(step, value)``) and user attributes of a running trial, in one write.

    What ``Trial.report`` and ``Trial.set_user_attr`` write, one commit (or one journal append,
    each under a file lock and flushed to disk) apiece, a dozen or more per trial in the driver.
    On the journal it is one append of the same lines. On Optuna's RDB storage it is one
    transaction: the values inserted as rows of Optuna's table in one statement, the
    attributes through the storage's own writer. On any other storage, or an Optuna without those
    parts, through the public calls. A step already reported is skipped, as ``report`` does.
    """
    reported = trial._cached_frozen_trial.intermediate_values
    fresh = [(int(step), float(value)) for step, value in values if int(step) not in reported]
    attrs = attrs or {}
    if not fresh and not attrs:
        return
    journal = _journal(trial.study)
    if journal is not None:
        _append_to_journal(journal, trial._trial_id, fresh, attrs)
        _cache(trial, fresh, attrs)
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
    _cache(trial, fresh, attrs)


def _cache(trial: optuna.Trial, values: list[tuple[int, float]], attrs: dict[str, Any]) -> None:
    cached = trial._cached_frozen_trial  # as report and set_user_attr keep it
    cached.intermediate_values.update(values)
    cached.user_attrs.update(attrs)


def _journal(study: optuna.Study) -> Any:
    """The study's journal storage if this Optuna has the parts :func:`_append_to_journal` uses, else None."""
    try:
        from optuna.storages import JournalStorage
        from optuna.storages.journal._storage import JournalOperation
    except ImportError:
        return None
    storage = getattr(study, "_storage", None)
    needed = ("_backend", "_thread_lock", "_replay_result", "_sync_with_backend")
    wanted = ("SET_TRIAL_INTERMEDIATE_VALUE", "SET_TRIAL_USER_ATTR")
    if not isinstance(storage, JournalStorage) or not all(hasattr(storage, n) for n in needed):
        return None
    return storage if all(hasattr(JournalOperation, name) for name in wanted) else None


def _append_to_journal(storage: Any, trial_id: int, values: list[tuple[int, float]], attrs: dict[str, Any]) -> None:
    """The lines ``Trial.report`` and ``Trial.set_user_attr`` append, appended together (one lock, one fsync)."""
    from optuna.storages.journal._storage import JournalOperation

    with storage._thread_lock:
        worker = storage._replay_result.worker_id
        head = {"worker_id": worker, "trial_id": trial_id}
        value_op, attr_op = JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE, JournalOperation.SET_TRIAL_USER_ATTR
        logs = [{"op_code": value_op, **head, "step": step, "intermediate_value": value} for step, value in values]
        logs += [{"op_code": attr_op, **head, "user_attr": {key: value}} for key, value in attrs.items()]
        storage._backend.append_logs(logs)
        storage._sync_with_backend()  # raises, as the public calls do, if the trial had already ended


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
