"""SQLite stores (MLflow's default store, each sweep's Optuna study) in WAL mode with normal sync.

SQLite's default rollback journal with ``synchronous=FULL`` syncs the disk two or three times per
commit: about 24 ms a commit on the project's machine, against 0.1 ms in write-ahead-log mode
with ``synchronous=NORMAL``. A sweep commits a few dozen times per trial (Optuna's intermediate
values and user attributes, MLflow's runs, params, tags and metric batches), so the default made
the stores, not training, the cost of short trials. WAL also lets readers (the MLflow UI, a report)
read while trials write. A commit survives the process that made it being killed (SIGKILL, OOM);
only a power loss or OS crash can take the last commits back. WAL needs every process on one
host, as a SQLite file does anyway; on a cluster, MLflow is a tracking server.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")


def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    try:
        for pragma in PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def use_wal() -> None:
    """Open every SQLite database this process connects to from now on in WAL mode (idempotent)."""
    if not event.contains(Engine, "connect", _on_connect):
        event.listen(Engine, "connect", _on_connect)
