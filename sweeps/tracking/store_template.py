"""A new SQLite MLflow store seeded from an empty one MLflow made before, instead of made from scratch.

MLflow makes a new SQLite store by running every one of its schema migrations (about 2 s of CPU
here, 4 s on a loaded 2-core machine), in the driver, while Ray starts and the first trials import
on the same CPUs. The first sweep in a folder (its ``mlflow.db``) and each test's store paid it.
So the first store this user makes with a given MLflow version is also copied, emptied of its
``Default`` experiment, to a cache folder (``$XDG_CACHE_HOME/image-sweeps``, else
``~/.cache/image-sweeps``); a later new store starts as a copy of it, and MLflow, opening it,
finds its schema at the head revision and creates the ``Default`` experiment itself (with the
artifact location and time it would have given it). Nothing of MLflow is reimplemented: every
table and row in the copy is one MLflow wrote. Any failure (no cache folder, a damaged copy) falls
back to MLflow's own path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote

from sweeps.compat.mlflow_internals import schema_head

T = TypeVar("T")
log = logging.getLogger(__name__)

CACHE_FOLDER = "image-sweeps"


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URI (its query left out); None for an in-memory store or another URI."""
    path = unquote(uri[len("sqlite:///") :].split("?", 1)[0]) if uri.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


def template_path() -> Path:
    """Where the empty store of the installed MLflow version is kept."""
    import mlflow

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / CACHE_FOLDER / f"mlflow-{mlflow.__version__}-empty.db"


def open_new(path: Path, open_store: Callable[[], T]) -> T:
    """Open the new store at ``path`` with ``open_store``: seeded from the template, else as MLflow makes it.

    Call under the store's lock (``mlflow_client.schema_lock``). A store MLflow made from scratch
    becomes the template when there is none. A seeded store MLflow cannot open is removed, with
    its template, and the error raised (MLflow keeps the file's engine for the process, so it is
    not retried here); the next start makes the store from scratch.
    """
    if not seed_new_store(path):
        made = open_store()
        keep_as_template(path)
        return made
    try:
        return open_store()
    except Exception:
        forget(path)
        raise


def seed_new_store(path: Path) -> bool:
    """Make ``path`` (which must not exist) a copy of the cached empty store; False when there is none.

    Call under the store's lock (``mlflow_client.schema_lock``), before MLflow opens it.
    """
    template, head = template_path(), schema_head()
    if path.exists() or not template.is_file() or head is None:
        return False
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        if _revision(template) != head:  # hand-edited, or left by an MLflow of another schema
            raise sqlite3.DatabaseError(f"{template} is not at MLflow's schema head")
        _copy_database(template, part)
        os.replace(part, path)
    except (OSError, sqlite3.Error) as exc:
        log.debug("could not seed %s from %s: %s", path, template, exc)
        with contextlib.suppress(OSError):
            part.unlink()
        if isinstance(exc, sqlite3.DatabaseError):  # a damaged template: the next new store makes another
            with contextlib.suppress(OSError):
                template.unlink()
        return False
    return True


def keep_as_template(path: Path) -> None:
    """Keep a copy of the store MLflow just made at ``path`` (no runs yet) as the cached empty store.

    Its ``Default`` experiment is left out, so that each store seeded from it gets its own from
    MLflow. Does nothing when the template exists or cannot be written.
    """
    template = template_path()
    if template.exists() or schema_head() is None:  # without the head, no seeded store could be checked
        return
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=template.parent) as folder:
            part = Path(folder) / template.name
            _copy_database(path, part)
            with contextlib.closing(sqlite3.connect(part)) as connection, connection:
                if connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]:
                    return  # not empty after all (another process logged already): not a template
                connection.execute("DELETE FROM experiments WHERE experiment_id = 0")
                if connection.execute("SELECT COUNT(*) FROM experiments").fetchone()[0]:
                    return
            with contextlib.closing(sqlite3.connect(part)) as connection:
                connection.execute("PRAGMA journal_mode=DELETE")  # one file: a read leaves no -wal or -shm beside it
                connection.execute("VACUUM")
            os.replace(part, template)
    except (OSError, sqlite3.Error) as exc:
        log.debug("could not keep %s as the empty-store template: %s", path, exc)


def forget(path: Path) -> None:
    """Remove a seeded store MLflow could not open, and the template it came from."""
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        with contextlib.suppress(OSError):
            (path.parent / name).unlink()
    with contextlib.suppress(OSError):
        template_path().unlink()


def _revision(path: Path) -> str:
    """The alembic revision a store's schema is at."""
    with contextlib.closing(sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)) as connection:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(row[0]) if row else ""


def _copy_database(source: Path, target: Path) -> None:
    """Copy a SQLite database with SQLite's backup (what its write-ahead log holds included)."""
    with (
        contextlib.closing(sqlite3.connect(f"file:{quote(str(source))}?mode=ro", uri=True)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)
