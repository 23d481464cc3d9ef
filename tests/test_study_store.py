"""The sweep's stores: the study in its journal (an older sweep's in SQLite), one write per trial's results.

Also MLflow's SQLite store, written in WAL mode.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest

from sweeps.store.study import create_study, load_study, open_storage, record_trial
from sweeps.store.sweep_dir import SweepStoreError, new_sweep_dir
from sweeps.tracking.mlflow_client import client
from tests.helpers import minimal_toy_spec, spec_from_dict


def journal_mode(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])


def test_mlflow_store_is_written_in_wal_mode_and_the_study_in_its_journal(tmp_path: Path) -> None:
    client(f"sqlite:///{tmp_path}/mlflow.db").create_experiment("wal")
    spec = spec_from_dict(minimal_toy_spec("wal"))
    sweep = new_sweep_dir(tmp_path / "runs", "wal")
    create_study(sweep, spec).ask()
    assert journal_mode(tmp_path / "mlflow.db") == "wal"
    assert sweep.optuna_journal.is_file() and not sweep.optuna_db.exists()
    # Optuna's own reader, as its CLI and optuna-dashboard open it, finds the study and its trial
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(sweep.storage_location))
    assert len(optuna.load_study(study_name="wal", storage=journal).trials) == 1
    # and MLflow's own reader (no use_wal in this process path) still reads what was written
    assert mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("wal") is not None


def _commits(study: Any) -> list[int]:
    """A list that grows by one on each commit to the study's SQLite storage."""
    from sqlalchemy import event

    seen: list[int] = []
    event.listen(study._storage._backend.engine, "commit", lambda _: seen.append(1))
    return seen


def test_intermediate_values_and_user_attrs_of_a_trial_are_written_in_one_commit(tmp_path: Path) -> None:
    """What the searcher writes per trial: as the public calls would, in one commit, not one per row."""
    batched = optuna.create_study(storage=f"sqlite:///{tmp_path}/a.db")
    one_by_one = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    values, attrs = [(1, 0.5), (2, 0.25), (3, math.inf)], {"status": "completed", "config": {"lr": 0.1}}
    commits = _commits(batched)
    for study in (batched, one_by_one):
        trial = study.ask()
        before = len(commits)
        record_trial(trial, values, attrs)
        record_trial(trial, [(3, 9.0), (4, 0.125)])  # step 3 is kept as first reported, as Trial.report does
        if study is batched:
            assert len(commits) - before == 2  # one per call; one per row before (6)
        assert trial._cached_frozen_trial.intermediate_values == {1: 0.5, 2: 0.25, 3: math.inf, 4: 0.125}
        study.tell(trial, 0.125)
    stored = [optuna.load_study(study_name=s.study_name, storage=s._storage).trials[0] for s in (batched, one_by_one)]
    assert stored[0].intermediate_values == stored[1].intermediate_values == {1: 0.5, 2: 0.25, 3: math.inf, 4: 0.125}
    assert stored[0].user_attrs == stored[1].user_attrs == attrs


def test_a_batch_that_hits_an_integrity_error_is_rolled_back_and_written_row_by_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer inserting the same row between Optuna's check and insert: nothing is lost."""
    from sqlalchemy.exc import IntegrityError

    storage = f"sqlite:///{tmp_path}/a.db"
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    backend = study._storage._backend
    write = backend._set_trial_attr_without_commit

    def collide_once(*args: Any) -> None:
        monkeypatch.setattr(backend, "_set_trial_attr_without_commit", write)
        raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))

    monkeypatch.setattr(backend, "_set_trial_attr_without_commit", collide_once)  # after the values were added
    record_trial(trial, [(1, 0.5), (2, 0.25)], {"status": "running"})
    frozen = optuna.load_study(study_name=study.study_name, storage=storage).trials[0]
    assert frozen.intermediate_values == {1: 0.5, 2: 0.25} and frozen.user_attrs == {"status": "running"}


def test_a_step_stored_by_another_writer_is_updated_as_trial_report_would(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/a.db"
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    other = optuna.load_study(study_name=study.study_name, storage=storage)
    other._storage.set_trial_intermediate_value(trial._trial_id, 2, 7.0)  # not in ``trial``'s cache
    record_trial(trial, [(1, 0.5), (2, 0.25), (3, -math.inf)])
    frozen = optuna.load_study(study_name=study.study_name, storage=storage).trials[0]
    assert frozen.intermediate_values == {1: 0.5, 2: 0.25, 3: -math.inf}


def test_a_trials_values_and_attrs_are_one_journal_append_and_read_back_as_the_public_calls_write_them(
    tmp_path: Path,
) -> None:
    """On the journal, record_trial appends the lines Trial.report and set_user_attr would, under one lock."""
    sweep = new_sweep_dir(tmp_path / "runs", "journal")
    study = optuna.create_study(storage=open_storage(sweep), study_name="journal")
    values, attrs = [(1, 0.5), (2, 0.25), (3, math.inf)], {"status": "completed", "config": {"lr": 0.1}}
    trial = study.ask()
    backend = study._storage._backend  # type: ignore[attr-defined]
    appends: list[int] = []
    append_logs = backend.append_logs
    backend.append_logs = lambda logs: (appends.append(len(logs)), append_logs(logs))
    record_trial(trial, values, attrs)
    assert appends == [5]  # one line each, as the public calls write them; one append (5 before)
    backend.append_logs = append_logs
    record_trial(trial, [(3, 9.0), (4, 0.125)])  # step 3 is kept as first reported, as Trial.report does
    study.tell(trial, 0.125)
    stored = load_study(sweep).trials[0]
    assert stored.intermediate_values == {1: 0.5, 2: 0.25, 3: math.inf, 4: 0.125}
    assert stored.user_attrs == attrs
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        record_trial(trial, [(5, 1.0)])  # an ended trial, as Trial.report refuses it


def test_a_sweep_made_before_the_journal_is_read_from_its_sqlite_study(tmp_path: Path) -> None:
    """An older sweep folder holds ``optuna.db``: it is opened there, not beside it in a new journal."""
    sweep = new_sweep_dir(tmp_path / "runs", "older")
    old = optuna.create_study(storage=f"sqlite:///{sweep.optuna_db}", study_name="older")
    old.tell(old.ask(), 0.5)
    assert sweep.storage_location == f"sqlite:///{sweep.optuna_db}"
    assert [t.value for t in load_study(sweep).trials] == [0.5]
    assert not sweep.optuna_journal.exists()
    with pytest.raises(SweepStoreError, match="no Optuna study"):
        load_study(new_sweep_dir(tmp_path / "runs", "empty"))
