"""Optuna's private parts the engine uses: writing a trial's progress in one journal append or transaction.

``Trial.report`` and ``Trial.set_user_attr`` write one commit (or one journal append, each under a
file lock and flushed to disk) apiece, a dozen or more per trial in the driver. These write the
same records together. Each capability check returns None where this Optuna lacks a part, and
the caller then uses the public calls.
"""

from __future__ import annotations

from typing import Any

import optuna


def cached_trial(trial: optuna.Trial) -> Any:
    """The trial's frozen copy that ``report`` and ``set_user_attr`` keep up to date in memory."""
    return trial._cached_frozen_trial


def trial_id(trial: optuna.Trial) -> int:
    """The storage's id of ``trial`` (not its number)."""
    return trial._trial_id


def in_distribution(distribution: Any, value: Any) -> bool:
    """Whether ``value`` (as a config holds it) is one ``distribution`` samples: a choice, or in range, on its step."""
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def running_trial(study: optuna.Study, frozen: Any) -> optuna.Trial:
    """A live ``Trial`` for a frozen RUNNING trial of ``study`` (to report to and tell it later)."""
    return optuna.Trial(study, frozen._trial_id)


def write_progress(trial: optuna.Trial, values: list[tuple[int, float]], attrs: dict[str, Any]) -> None:
    """Write a running trial's new intermediate values and user attributes together.

    One journal append on a journal storage, one transaction on an RDB storage, else one public
    call per value and attribute (as on any storage where this Optuna lacks the parts used here).
    """
    storage = _journal(trial.study)
    if storage is not None:
        _append_to_journal(storage, trial._trial_id, values, attrs)
        _cache(trial, values, attrs)
        return
    backend = _rdb_backend(trial.study)
    if backend is None:
        _one_by_one(trial, values, attrs)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from sqlalchemy.exc import IntegrityError

    try:
        with _create_scoped_session(backend.scoped_session) as session:
            _add_values(backend, session, trial._trial_id, values)
            for key, value in attrs.items():
                model = models.TrialUserAttributeModel
                backend._set_trial_attr_without_commit(session, model, trial._trial_id, key, value)
    except IntegrityError:  # another writer got there first (rolled back): one row at a time, as Optuna does
        _one_by_one(trial, values, attrs)
        return
    _cache(trial, values, attrs)


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
    """The study's RDB storage if this Optuna has the writers :func:`write_progress` uses, else None."""
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
