"""The tracking URI and its store, checked before a sweep creates anything, and opened once.

``check_tracking_uri`` creates nothing and answers within a bounded time: the URI's scheme is one
MLflow keeps runs at; a SQLite file is a SQLite database and MLflow's (or new, in a folder that
exists and can be written); a tracking server accepts a connection and answers a request as an
MLflow server, with the credentials MLflow would send. ``open_store`` then opens the store (a
new SQLite file gets MLflow's tables, once, under a lock). Each failure is one line saying what
is wrong and what to do (:class:`TrackingStoreError`, exit code 2 from the ``sweeps`` command).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

from sweeps.compat.mlflow_internals import probe_tracking_server
from sweeps.core.errors import InputError
from sweeps.core.failures import failure_reason
from sweeps.store.sweep_dir import nearest_existing
from sweeps.tracking.mlflow_client import client, looks_like_uri
from sweeps.tracking.store_template import sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient

TIMEOUT_S = 5.0
"""How long a tracking server (or database server) has to accept a connection, and then to answer."""

SCHEMES = {"sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc"}
"""The schemes MLflow keeps runs at (a ``+driver`` suffix, as in ``postgresql+psycopg2``, is allowed)."""
SERVER_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
SQLITE_HEADER = b"SQLite format 3\x00"
MLFLOW_TABLES = {"experiments", "alembic_version"}
USAGE = "sqlite:///PATH/mlflow.db (a file) or http://HOST:PORT (a tracking server)"


class TrackingStoreError(InputError):
    """The tracking URI cannot work: unsupported, unreachable, not MLflow, or its store is unusable."""


def check_tracking_uri(uri: str, timeout: float = TIMEOUT_S, must_exist: bool = False) -> None:
    """Raise TrackingStoreError (one line) if runs cannot be kept at ``uri``; create nothing.

    ``uri`` is resolved (``resolve_tracking_uri``). ``must_exist``: a SQLite file or folder that
    is not there yet is an error too (``sweeps ui`` reads a store, it does not make one).
    """
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    base = scheme.split("+", 1)[0]
    if not scheme and looks_like_uri(uri):
        prefix = uri.split(":", 1)[0]
        raise TrackingStoreError(
            f"tracking URI {uri!r} is neither a folder's path nor a URI (a URI has '//' after '{prefix}:'); "
            f"pass {USAGE}"
        )
    if base not in SCHEMES:
        raise TrackingStoreError(
            f"tracking URI {uri!r}: MLflow cannot keep runs at a {scheme or 'schemeless'!r} URI; pass {USAGE}"
        )
    if base == "sqlite":
        _check_sqlite(uri, must_exist)
    elif base == "file":
        _check_folder(uri, must_exist)
    elif base in SERVER_PORTS:
        host, port = _host_port(uri, SERVER_PORTS[base])
        what = "MLflow server" if base.startswith("http") else f"{base} server"
        _connect(uri, host, port, timeout, what)
        if base.startswith("http"):
            _check_answers_as_mlflow(uri, timeout)


def open_store(uri: str) -> MlflowClient:
    """The process's client of ``uri``, its store opened now; a failure is one line (TrackingStoreError)."""
    try:
        return client(uri)
    except Exception as exc:  # noqa: BLE001 - any store that cannot open is the user's to fix
        raise TrackingStoreError(f"cannot open the MLflow store {uri}: {failure_reason(exc)}") from None


def _check_sqlite(uri: str, must_exist: bool) -> None:
    path = sqlite_path(uri)
    if path is None:
        raise TrackingStoreError(
            f"tracking URI {uri!r}: a SQLite store is a file, sqlite:///PATH (sqlite:////ABSOLUTE/PATH); "
            "an in-memory store is not shared with the trials"
        )
    if path.is_dir():
        raise TrackingStoreError(f"tracking URI {uri!r}: {path} is a folder, not a SQLite file; pass {USAGE}")
    if path.exists() and not path.is_file():
        raise TrackingStoreError(f"tracking URI {uri!r}: {path} is not a regular file (a device?); pass {USAGE}")
    if not path.exists():
        if must_exist:
            raise TrackingStoreError(_no_store(path))
        if not path.parent.is_dir():
            hint = _absolute_hint(path)
            raise TrackingStoreError(
                f"tracking URI {uri!r}: folder {path.parent} does not exist; create it first{hint}"
            )
        if not os.access(path.parent, os.W_OK | os.X_OK) or not _can_create_in(path.parent):
            raise TrackingStoreError(f"tracking URI {uri!r}: cannot create {path}: folder {path.parent} is read-only")
        return
    try:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise TrackingStoreError(f"cannot read the MLflow store {path}: {exc.strerror or exc}") from None
    if head and head != SQLITE_HEADER:
        raise TrackingStoreError(_not_mlflow(path, "is not a SQLite database (a corrupt or foreign file)"))
    if head:
        tables = _sqlite_tables(path)
        if tables and not tables & MLFLOW_TABLES:
            shown = ", ".join(sorted(tables)[:4]) + (", ..." if len(tables) > 4 else "")
            raise TrackingStoreError(
                _not_mlflow(path, f"is a SQLite database but not an MLflow store (tables: {shown})")
            )
    if not os.access(path, os.W_OK):
        raise TrackingStoreError(f"the MLflow store {path} is read-only: check its permissions")


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be made in ``folder``: root passes ``os.access`` where creating fails (``/sys``).

    A store there passed ``--check``, then the sweep started Ray and retried MLflow's engine for two
    minutes before it said so.
    """
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _absolute_hint(path: Path) -> str:
    """For ``sqlite:///tmp/x.db`` (read as ``./tmp/x.db``): the four-slash URI of the absolute path it meant."""
    try:
        written = path.relative_to(Path.cwd())
    except ValueError:
        return ""
    if not Path("/", written).parent.is_dir():
        return ""
    return f" (sqlite:/// takes a path relative to here; did you mean sqlite:////{written}?)"


def _no_store(path: Path) -> str:
    return (
        f"no MLflow store at {path}: run this in the folder that holds the sweeps' mlflow.db, or pass "
        "--tracking-uri sqlite:///PATH/mlflow.db (or the tracking server's URL)"
    )


def _not_mlflow(path: Path, what: str) -> str:
    return f"{path} {what}: move it away (a new store is made in its place) or pass another --tracking-uri"


def _sqlite_tables(path: Path) -> set[str]:
    """The tables of a SQLite file, read-only; raise TrackingStoreError if it is corrupt."""
    try:
        connection = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return set()  # cannot open read-only (e.g. a WAL file's companions missing): MLflow will tell
    try:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.OperationalError:
        return set()  # busy or locked: not a sign of a bad file
    except sqlite3.DatabaseError as exc:
        raise TrackingStoreError(_not_mlflow(path, f"is a damaged SQLite database ({exc})")) from None
    finally:
        connection.close()
    return {str(row[0]) for row in rows}


def _check_folder(uri: str, must_exist: bool) -> None:
    path = Path(unquote(urlsplit(uri).path))
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() not in ("true", "1"):
        raise TrackingStoreError(
            f"tracking URI {uri!r}: MLflow 3 opens a folder store only with MLFLOW_ALLOW_FILE_STORE=true (its "
            "file store is in maintenance mode); pass sqlite:///PATH/mlflow.db, or set that variable"
        )
    if path.exists() and not path.is_dir():
        raise TrackingStoreError(f"tracking URI {uri!r}: {path} is a file, not a folder; pass {USAGE}")
    if must_exist and not path.is_dir():
        raise TrackingStoreError(_no_store(path))
    if not must_exist and not os.access(nearest_existing(path), os.W_OK | os.X_OK):
        raise TrackingStoreError(f"tracking URI {uri!r}: cannot make the folder {path}; pass {USAGE}")


def _host_port(uri: str, default_port: int) -> tuple[str, int]:
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port or default_port
    except ValueError as exc:
        raise TrackingStoreError(f"tracking URI {uri!r} is not a valid URL ({exc}); pass {USAGE}") from None
    if not host:
        raise TrackingStoreError(f"tracking URI {uri!r} names no host; pass {USAGE}")
    return host, port


def _connect(uri: str, host: str, port: int, timeout: float, what: str) -> None:
    """Open and close a TCP connection to ``host:port`` within ``timeout`` (name lookup included)."""
    found: list[object] = []
    lookup = threading.Thread(target=_lookup, args=(host, port, found), daemon=True)
    lookup.start()
    lookup.join(timeout)
    if not found:
        raise TrackingStoreError(f"no {what} answers at {uri}: host {host!r} not found within {timeout:g} s")
    if isinstance(found[0], OSError):
        raise TrackingStoreError(f"no {what} answers at {uri}: host {host!r} not found; check the URI")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except ConnectionRefusedError:
        raise TrackingStoreError(
            f"no {what} answers at {uri}: connection refused (nothing listens on port {port}); "
            "start the server or pass another --tracking-uri"
        ) from None
    except TimeoutError:
        raise TrackingStoreError(
            f"no {what} answers at {uri}: no connection within {timeout:g} s; check the address and that the "
            "server runs, or pass another --tracking-uri"
        ) from None
    except OSError as exc:
        raise TrackingStoreError(f"no {what} answers at {uri}: {exc.strerror or exc}") from None


def _lookup(host: str, port: int, found: list[object]) -> None:
    try:
        found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    except OSError as exc:
        found.append(exc)


def _check_answers_as_mlflow(uri: str, timeout: float) -> None:
    try:
        status, body = probe_tracking_server(uri, timeout)
    except Exception as exc:  # noqa: BLE001 - whatever the request raised, the server did not answer
        if "timeout" in type(exc).__name__.lower() or "timed out" in str(exc).lower():
            raise TrackingStoreError(
                f"the server at {uri} accepted a connection but did not answer within {timeout:g} s; "
                "check that it is an MLflow tracking server and that it runs"
            ) from None
        raise TrackingStoreError(f"the server at {uri} did not answer as MLflow: {failure_reason(exc)}") from None
    if status in (401, 403):
        raise TrackingStoreError(
            f"the MLflow server at {uri} refused the request (HTTP {status}): give its login in "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN, or ~/.mlflow/credentials)"
        )
    try:
        answer = json.loads(body) if body.strip() else {}
    except ValueError:
        answer = None
    if status != 200 or not isinstance(answer, dict):
        raise TrackingStoreError(
            f"{uri} answered HTTP {status}{'' if isinstance(answer, dict) else ' (not JSON)'}, not as an MLflow "
            "tracking server: check the URI (the server's address, e.g. http://HOST:5000)"
        )
