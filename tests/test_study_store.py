"""The engine's cheap paths: SQLite stores in WAL mode, curves drawn without matplotlib."""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
from PIL import Image
from ray.tune.schedulers import AsyncHyperBandScheduler

from sweeps.core.plan import TrialPlan
from sweeps.engine.scheduler import rung_epochs
from sweeps.spec.sweep_spec import SpecError, SweepSpec, validate_spec
from sweeps.store.study import create_study, load_study, open_storage, record_trial
from sweeps.store.sweep_dir import SweepStoreError, new_sweep_dir
from sweeps.tracking.curves import CurveHistory, draw_curves
from sweeps.tracking.mlflow_client import client
from sweeps.tracking.trial_logger import TrialLogger
from sweeps.trial.epoch_loop import ReportCadence


def journal_mode(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])


def test_mlflow_store_is_written_in_wal_mode_and_the_study_in_its_journal(tmp_path: Path) -> None:
    client(f"sqlite:///{tmp_path}/mlflow.db").create_experiment("wal")
    spec = validate_spec(
        {
            "name": "wal",
            "trainer": "tests.toy_trainer:ToyTrainer",
            "metric": {"name": "val_loss", "mode": "min"},
            "params": {"lr": {"type": "float", "low": 1e-4, "high": 1.0}},
        },
        "<test>",
        [],
    )
    sweep = new_sweep_dir(tmp_path / "runs", "wal")
    create_study(sweep, spec).ask()
    assert journal_mode(tmp_path / "mlflow.db") == "wal"
    assert sweep.optuna_journal.is_file() and not sweep.optuna_db.exists()
    # Optuna's own reader, as its CLI and optuna-dashboard open it, finds the study and its trial
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(sweep.storage_location))
    assert len(optuna.load_study(study_name="wal", storage=journal).trials) == 1
    # and MLflow's own reader (no use_wal in this process path) still reads what was written
    assert mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("wal") is not None


def test_curves_png_has_a_panel_per_curve_with_lines_drawn(tmp_path: Path) -> None:
    history = CurveHistory()
    for step in range(1, 101):
        history.add(
            step,
            {
                "loss": 1.0 / step,
                "g/loss_scale": 2.0 ** (16 - min(step, 40) // 4),
                "d/loss_scale": 65536.0,
                "g/grad_norm": math.nan if step > 90 else 1.0 + step % 5,
                "output_std": 0.5,  # not a curve
            },
        )
    [path] = history.plot(tmp_path)
    image = Image.open(path).convert("RGB")
    assert image.size[1] == 3 * 150  # loss, loss_scale, grad_norm
    for panel in range(3):
        crop = image.crop((60, panel * 150 + 20, 470, panel * 150 + 130))
        colours = {c for _, c in crop.getcolors(maxcolors=100_000) or []}
        assert colours - {(255, 255, 255), (120, 120, 120), (0, 0, 0)}, f"panel {panel} has no line"


def test_curves_with_no_finite_value_or_one_point_still_draw(tmp_path: Path) -> None:
    path = draw_curves([("loss", {"loss": [(1, math.nan)]}), ("grad_norm", {"g": [(3, 2.0)]})], tmp_path / "c.png")
    assert Image.open(path).size == (480, 300)
    assert CurveHistory().plot(tmp_path) == []


def spec_with(asha: dict[str, Any], epochs: int, record: dict[str, Any] | None = None) -> SweepSpec:
    return validate_spec(
        {
            "name": "cadence",
            "trainer": "tests.toy_trainer:ToyTrainer",
            "metric": {"name": "val_loss", "mode": "min"},
            "budget": {"epochs": epochs},
            "asha": asha,
            "record": record or {},
            "params": {"lr": {"type": "float", "low": 1e-4, "high": 1.0}},
        },
        "<test>",
        [],
    )


@pytest.mark.parametrize(
    ("asha", "epochs"),
    [
        ({"grace_period": 1, "reduction_factor": 2}, 4),
        ({"grace_period": 1, "reduction_factor": 3}, 30),
        ({"grace_period": 2, "reduction_factor": 2, "brackets": 3}, 40),
        ({"grace_period": 10, "reduction_factor": 2}, 10),
    ],
)
def test_trials_report_at_every_epoch_ray_asha_compares(asha: dict[str, Any], epochs: int) -> None:
    spec = spec_with(asha, epochs)
    ray_asha = AsyncHyperBandScheduler(
        time_attr="epoch",
        max_t=epochs,
        grace_period=spec.asha.grace_period,
        reduction_factor=spec.asha.reduction_factor,
        brackets=spec.asha.brackets,
    )
    milestones = {m for bracket in ray_asha._brackets for m, _ in bracket._rungs if m < epochs}
    assert rung_epochs(spec) == sorted(milestones)


def test_no_rungs_without_asha() -> None:
    assert rung_epochs(spec_with({"enabled": False}, 10)) == []


def test_report_cadence_reports_rungs_last_epoch_and_after_the_interval() -> None:
    cadence = ReportCadence(TrialPlan("toy", "val_loss", 8, report_epochs=[1, 2, 4], report_every_s=0.3))
    assert [e for e in range(1, 9) if cadence.due(e)] == [1, 2, 4, 8]
    time.sleep(0.35)
    assert cadence.due(5)
    cadence.reported()
    assert not cadence.due(6)
    every_epoch = ReportCadence(TrialPlan("toy", "val_loss", 3))
    assert all(every_epoch.due(e) for e in range(1, 4))


def test_report_interval_must_not_be_negative() -> None:
    with pytest.raises(SpecError, match=r"record.report_every_s: must be >= 0"):
        spec_with({}, 4, {"report_every_s": -1})
    assert spec_with({}, 4, {"report_every_s": "1e-1"}).record.report_every_s == pytest.approx(0.1)


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


def test_short_epochs_reach_mlflow_in_one_batch_and_long_ones_each_as_it_ends(tmp_path: Path) -> None:
    """Epoch metrics wait in the step buffer until ``every_s`` has passed since the last send, or a flush."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = client(uri)
    experiment = store.create_experiment("batch")
    stored = {}
    for every_s in (60.0, 0.0):
        run_id = store.create_run(experiment).info.run_id
        logger = TrialLogger(uri, run_id, every_s=every_s)
        for epoch in (1, 2, 3):
            logger.add_step(epoch, {"loss": 1.0 / epoch})
            logger.log_metrics({"val_loss": 2.0 / epoch}, step=epoch)
        assert logger.sender.drain(timeout=60)
        stored[every_s] = len(store.get_metric_history(run_id, "val_loss"))
        assert logger.flush(timeout=60) and logger.undelivered() == []
        assert [m.step for m in store.get_metric_history(run_id, "val_loss")] == [1, 2, 3]
        assert [m.step for m in store.get_metric_history(run_id, "loss")] == [1, 2, 3]
        logger.log_texts({"config.yaml": "lr: 0.1\n", "source/toy.py": "x = 1\n"})
        assert logger.close(timeout=60)
    assert stored == {60.0: 0, 0.0: 3}  # nothing sent before the flush; each epoch at once
    files = {f.path for f in store.list_artifacts(run_id)} | {f.path for f in store.list_artifacts(run_id, "source")}
    assert files == {"config.yaml", "source", "source/toy.py"}


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
