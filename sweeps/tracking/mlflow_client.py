"""The engine's MLflow client: tracking URIs, one client per process, retries, and how values are named.

Every call is retried, so a busy SQLite file or a brief server outage loses nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sweeps.core.records import trial_label

if TYPE_CHECKING:
    from mlflow import MlflowClient

T = TypeVar("T")
log = logging.getLogger(__name__)

EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
RUN_STATUS = {
    "completed": "FINISHED",
    "pruned": "FINISHED",
    "diverged": "FINISHED",
    "failed": "FAILED",
    "oom": "FAILED",
    "interrupted": "KILLED",
}
DEFAULT_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(uri: str | None, base: Path | None = None) -> str:
    """Return ``uri`` with local paths made absolute (trial processes run in other folders)."""
    uri = uri or DEFAULT_URI
    base = base or Path.cwd()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path != ":memory:" and not Path(path).is_absolute():
            return "sqlite:///" + str((base / path).resolve())
        return uri
    if "://" not in uri and not looks_like_uri(uri):
        return (base / uri).resolve().as_uri()
    return uri


def looks_like_uri(text: str) -> bool:
    """Whether ``text`` begins with a URI scheme (``file:``, ``sqlite:``), not a path's first folder."""
    head = text.split(":", 1)[0] if ":" in text else ""
    return len(head) > 1 and head[0].isalpha() and all(c.isalnum() or c in "+.-" for c in head)


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside a SQLite file, else the server's default."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return None


def ui_url(server: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's training runs (not the GenAI overview)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` is the store refusing the request (a bad value, a changed param), not being busy or down."""
    from mlflow.exceptions import MlflowException  # imported here: mlflow is heavy, and this runs only on errors

    return isinstance(exc, MlflowException) and exc.get_http_status_code() == 400


UNREACHABLE = (
    "Connection refused",
    "Max retries exceeded",
    "Failed to establish a new connection",
    "Connection aborted",
    "RemoteDisconnected",
)
"""What a tracking server that is down (or restarting) makes a call fail with."""

SERVER_PATIENCE_S = 900.0
"""How long a call waits for a tracking server that does not answer before it gives up."""

SERVER_RETRY_S = 5.0
"""The longest pause between tries while a tracking server does not answer (the sweep goes on that soon after)."""

HTTP_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
"""Set (unless the user set them) where the engine talks to MLflow: its own retries, not MLflow's.

MLflow's client retried a request to a server that was down 7 times with a backoff of up to two
minutes, inside each of the engine's tries: a sweep whose server was down for 2 minutes stood still
for 4. And it printed two links per trial run it closed (to its GenAI view).
"""


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` is a tracking server not answering (down, restarting), not a store error."""
    text = str(exc)
    return any(sign in text for sign in UNREACHABLE)


def unreachable_state(exc: BaseException) -> str:
    """How a tracking server :func:`unreachable` flags fails: ``does not answer``, or ``answers 503 ...``.

    MLflow's client reports a server that answers every try with an error status (a 503 while it
    starts or is overloaded, a 502 from its proxy) as "Max retries exceeded", as it does a refused
    connection; a warning that said "does not answer" sent its reader to check a server that was up.
    """
    found = re.search(r"too many (\d{3}) error responses", str(exc))
    return f"answers HTTP {found.group(1)} (up, not serving yet)" if found else "does not answer"


def retry(call: Callable[[], T], what: str, attempts: int = 8, delay: float = 0.5) -> T:
    """Run ``call``, retrying with exponential backoff; re-raise after ``attempts`` failures.

    A call the store refuses as a bad request (:func:`refused`) is tried twice at most. A tracking
    server that does not answer is tried every few seconds for :data:`SERVER_PATIENCE_S`.
    """
    down_since: float | None = None
    attempt = 0
    while True:
        try:
            result = call()
        except Exception as exc:  # noqa: BLE001 - any store error is worth another try
            down = unreachable(exc)
            if down and down_since is None:
                down_since = time.monotonic()
                state = unreachable_state(exc)
                log.warning("MLflow %s: the tracking server %s; retrying every %g s", what, state, SERVER_RETRY_S)
            waited = time.monotonic() - down_since if down_since is not None else 0.0
            if (refused(exc) and attempt >= 1) or (not down and attempt >= attempts - 1) or waited > SERVER_PATIENCE_S:
                raise
            if not down:
                log.warning("MLflow %s failed (%s); retrying", what, exc)
            time.sleep(min(delay * 2**attempt, SERVER_RETRY_S if down else 30.0))
            attempt += 1
            continue
        if down_since is not None:
            log.warning(
                "MLflow %s: the tracking server answers again after %.0f s", what, time.monotonic() - down_since
            )
        return result


@lru_cache(maxsize=8)
def client(uri: str) -> MlflowClient:
    """The process's MLflow client bound to ``uri`` (no global MLflow state is touched).

    One per URI and process: building a client opens and checks the store (0.1 to 0.6 s for
    SQLite here), which a reused trial process would otherwise pay for every trial. A SQLite store
    is opened under a lock (:func:`schema_lock`): a new file starts as a copy of an empty store
    MLflow made before, or MLflow creates its tables then (``sweeps.tracking.store_template``).
    """
    from mlflow import MlflowClient

    from sweeps.store.sqlite_wal import use_wal
    from sweeps.tracking import store_template

    use_wal()
    for key, value in HTTP_RETRY_ENV.items():  # read by MLflow at each request
        os.environ.setdefault(key, value)
    with schema_lock(uri):
        path = store_template.sqlite_path(uri)
        if path is None or path.exists():
            return MlflowClient(tracking_uri=uri)
        return store_template.open_new(path, lambda: MlflowClient(tracking_uri=uri))


def schema_lock(uri: str, timeout: float = 300.0) -> contextlib.AbstractContextManager[object]:
    """A lock, across this host's processes, held while a SQLite store is opened.

    MLflow creates its tables when it opens a new database, and checks first without a lock: two
    sweeps started at once on a new ``mlflow.db`` both created them and the second failed
    (``table alembic_version already exists``). The lock file is in the system's temp folder,
    named after the URI, so nothing is added beside the store. Other stores need no lock.
    """
    if not uri.startswith("sqlite:"):
        return contextlib.nullcontext()
    from filelock import FileLock

    key = hashlib.sha256(uri.encode()).hexdigest()[:20]
    return FileLock(str(Path(tempfile.gettempdir()) / f"sweeps-mlflow-open-{key}.lock"), timeout=timeout)


def param_text(value: Any) -> str:
    """How a parameter value is written as an MLflow param: exactly (a float as Python writes it back).

    What a user copies from the MLflow UI is then the trial's value, as the export holds it.
    """
    return repr(value) if isinstance(value, float) else str(value)


def short_text(value: Any) -> str:
    """A parameter value in a run name or a table: a float to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_name(number: int, sampled: dict[str, Any]) -> str:
    """A child run's name: trial number and its sampled values, e.g. ``t003 lr=0.0012 kernel_size=5``."""
    text = " ".join(f"{key}={short_text(value)}" for key, value in sampled.items())
    return f"{trial_label(number)} {text}"[:240].strip()
