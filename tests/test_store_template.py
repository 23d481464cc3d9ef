"""A new SQLite MLflow store starts as a copy of an empty store MLflow made before (real MLflow, real files)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sweeps.tracking.mlflow_client import client
from sweeps.tracking.store_template import template_path


def _schema(path: Path) -> tuple[set[tuple[str, tuple[str, ...]]], str]:
    """Each table's and index's definition (its lines sorted: MLflow's migrations order constraints
    differently from one run to the next), and the schema's revision."""
    with sqlite3.connect(path) as connection:
        tables = connection.execute("SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index')").fetchall()
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    lines = {name: sorted(line.strip().rstrip(",") for line in str(sql).splitlines()) for name, sql in tables}
    return {(str(name), tuple(lines[name])) for name in lines}, str(revision)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cache"


def test_a_seeded_store_is_the_store_mlflow_makes(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert not template_path().exists()
    made = client(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}")  # MLflow makes it: its schema's every migration
    assert template_path().is_file() and template_path().parent == cache / "image-sweeps"
    seeded = client(f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}")
    assert _schema(tmp_path / "b" / "mlflow.db") == _schema(tmp_path / "a" / "mlflow.db")
    for store in (made, seeded):  # the Default experiment is MLflow's own, made when it opened each store
        default = store.get_experiment("0")
        assert default.name == "Default" and default.artifact_location == str(tmp_path / "mlruns" / "0")
    assert seeded.get_experiment("0").creation_time >= made.get_experiment("0").creation_time
    experiment = seeded.create_experiment("sweep")
    assert experiment == made.create_experiment("sweep") == "1"  # ids go on as in a store MLflow made
    run = seeded.create_run(experiment)
    seeded.log_metric(run.info.run_id, "val_loss", 0.5, step=1)
    assert seeded.get_run(run.info.run_id).data.metrics == {"val_loss": 0.5}
    with sqlite3.connect(template_path()) as connection:  # the template holds no experiment, no run
        assert connection.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)


@pytest.mark.parametrize("damage", ["not a database", "old revision"])
def test_a_damaged_template_leaves_mlflow_to_make_the_store_and_is_replaced(
    tmp_path: Path, cache: Path, damage: str
) -> None:
    client(f"sqlite:///{tmp_path / 'first.db'}")
    good = _schema(tmp_path / "first.db")
    if damage == "not a database":
        template_path().write_bytes(b"this is not SQLite" * 100)
    else:
        with sqlite3.connect(template_path()) as connection:
            connection.execute("UPDATE alembic_version SET version_num = 'abc123'")
    store = client(f"sqlite:///{tmp_path / 'second.db'}")
    assert store.get_experiment("0").name == "Default"
    assert _schema(tmp_path / "second.db") == good
    assert client(f"sqlite:///{tmp_path / 'third.db'}").get_experiment("0").name == "Default"
    assert _schema(template_path())[1] == good[1]  # a good template again


def test_a_cache_folder_that_cannot_be_written_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cache").write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    store = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert store.get_experiment("0").name == "Default"
    assert not template_path().exists()
