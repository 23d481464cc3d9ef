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

import random
import warnings
from collections.abc import Iterable
from typing import Any

import optuna

from sweeps.compat.optuna_internals import cached_trial, write_progress
from sweeps.spec.sweep_spec import SweepSpec
from sweeps.store.cost_aware_sampler import CostAwareTPESampler
from sweeps.store.interleaved_sampler import RandomInterleavedSampler
from sweeps.store.sqlite_wal import use_wal
from sweeps.store.sweep_dir import SweepDir, SweepStoreError

WARM_ATTR = "warm_start"
"""User attribute of a trial a warm start told the study (``sweeps.engine.warm_start``): the sweep it ran in."""
QUEUED_ATTR = "warm_start_best"
"""User attribute of a trial a warm start queued (an earlier sweep's best config): ``<sweep> tNNN``."""
FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
"""The trials TPE counts against its ``n_startup_trials`` (Optuna's ``TPESampler``)."""


def is_told(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a study's trial was told by a warm start: it ran in another sweep, not this one."""
    return WARM_ATTR in trial.user_attrs


def drawn_by(study: optuna.Study, trial: optuna.Trial, spec: SweepSpec) -> str:
    """How the study's sampler drew ``trial``'s values (its MLflow tag ``sweep.drawn_by``).

    ``warm_start``: an earlier sweep's best config, queued by ``--warm-start``; ``random``: one of
    ``search.random_fraction``'s random trials, or any trial of ``search.sampler: random``;
    ``startup``: TPE's start-up trials, drawn at random while fewer than ``search.n_startup_trials``
    trials have finished (completed or pruned, as TPE counts them); ``tpe``: every other trial.
    Asked right after the trial's values were drawn (nothing is told in between).
    """
    if QUEUED_ATTR in trial.user_attrs:
        return "warm_start"
    sampler = study.sampler
    if isinstance(sampler, RandomInterleavedSampler):
        if sampler.is_random(trial.number):
            return "random"
        sampler = sampler.base
    if isinstance(sampler, optuna.samplers.RandomSampler):
        return "random"
    finished = study.get_trials(deepcopy=False, states=FINISHED_STATES)
    return "startup" if len(finished) < spec.search.n_startup_trials else "tpe"


def make_sampler(spec: SweepSpec, resumed_after: int = 0, stream: str = "") -> optuna.samplers.BaseSampler:
    """TPE (grouped and multivariate unless ``search.multivariate`` is off; constant liar for parallel trials).

    ``search.random_fraction`` of its trials are drawn at random instead (see
    :mod:`sweeps.store.interleaved_sampler`). ``resumed_after``: the trials the study holds when a
    resumed sweep reopens it; the samplers' random streams then start from a seed of their own, or
    they would draw the sweep's first configurations again (a seeded stream restarts with the process).
    ``stream``: likewise for a sweep warm-started from another of the same seed (its name), whose
    start-up trials would otherwise be the earlier sweep's own.
    """
    key = f"resumed:{resumed_after}" if resumed_after else stream
    seed = spec.seed if not key else random.Random(f"{spec.seed}:{key}").randrange(2**31)
    if spec.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        tpe_class = CostAwareTPESampler if spec.search.cost_aware else optuna.samplers.TPESampler
        tpe = tpe_class(
            seed=seed,
            n_startup_trials=spec.search.n_startup_trials,
            multivariate=spec.search.multivariate,
            group=spec.search.multivariate,
            constant_liar=True,
        )
    if spec.search.random_fraction <= 0:
        return tpe
    return RandomInterleavedSampler(tpe, spec.search.random_fraction, spec.seed, stream_seed=seed)


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
    try:
        return optuna.load_study(study_name=sweep.name, storage=open_storage(sweep), sampler=sampler)
    except KeyError:  # Optuna's "Record does not exist.": a journal emptied (a full disk, a copy cut short)
        where = sweep.optuna_journal if sweep.optuna_journal.is_file() else sweep.optuna_db
        raise SweepStoreError(
            f"no Optuna study {sweep.name!r} in {where} (empty or cut short): its trials are still in MLflow"
        ) from None


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
    reported = cached_trial(trial).intermediate_values
    fresh = [(int(step), float(value)) for step, value in values if int(step) not in reported]
    attrs = attrs or {}
    if fresh or attrs:
        write_progress(trial, fresh, attrs)
