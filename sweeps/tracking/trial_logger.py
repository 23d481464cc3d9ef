"""A trial's own MLflow records, sent from its process in the background: steps, epochs, artifacts, failure."""

from __future__ import annotations

import itertools
import logging
import math
import os
import queue
import shutil
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from sweeps.compat.mlflow_internals import latest_steps
from sweeps.core.failures import failure_reason
from sweeps.core.keys import TAG_REASON, TAG_WARNING
from sweeps.tracking.mlflow_client import client, refused, retry

log = logging.getLogger(__name__)


REFUSED_ATTEMPTS = 3
"""Tries of a call the store refuses as a bad request (HTTP 400): a busy store is waited for, a refusal is not."""


class _Sender:
    """Sends MLflow calls from a background thread, in order, retrying each until it succeeds.

    Training never waits on the tracking store: a busy SQLite file or a tracking server that is
    down for minutes only delays the calls, which go through when it is back. A call the store
    refuses as a bad request is given up after :data:`REFUSED_ATTEMPTS` tries (it would be refused
    for the whole ``patience``, and the calls queued behind it would wait as long).
    """

    def __init__(self, patience: float = 900.0) -> None:
        self.jobs: queue.Queue[tuple[str, Callable[[], Any]] | None] = queue.Queue()
        self.patience = patience
        self.failed: list[str] = []
        self.thread = threading.Thread(target=self._run, name="mlflow-sender", daemon=True)
        self.thread.start()

    def submit(self, what: str, call: Callable[[], Any]) -> None:
        """Queue one call."""
        self.jobs.put((what, call))

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                if job is None:
                    return
                self._send(*job)
            finally:
                self.jobs.task_done()

    def _send(self, what: str, call: Callable[[], Any]) -> None:
        deadline = time.monotonic() + self.patience
        attempt = 0
        while True:
            try:
                call()
                return
            except Exception as exc:  # noqa: BLE001 - any store error is worth another try
                if refused(exc) and attempt + 1 >= REFUSED_ATTEMPTS:
                    log.error("MLflow refused %s %d times, giving up: %s", what, attempt + 1, exc)
                    self.failed.append(what)
                    return
                if time.monotonic() > deadline:
                    log.error("MLflow %s failed for %.0f s, giving up: %s", what, self.patience, exc)
                    self.failed.append(what)
                    return
                if attempt == 0:
                    log.warning("MLflow %s failed (%s); retrying in the background", what, exc)
                time.sleep(min(0.5 * 2**attempt, 10.0))
                attempt += 1

    def drain(self, timeout: float) -> bool:
        """Wait until every queued call went through (or ``timeout`` passed); True if drained."""
        deadline = time.monotonic() + timeout
        with self.jobs.all_tasks_done:  # notified by task_done when the last queued call is done
            while self.jobs.unfinished_tasks and (left := deadline - time.monotonic()) > 0:
                self.jobs.all_tasks_done.wait(left)
            return not self.jobs.unfinished_tasks

    def close(self, timeout: float) -> bool:
        """Drain, then stop the thread."""
        drained = self.drain(timeout)
        self.jobs.put(None)
        return drained


SPOOL_PREFIX = "sweep-artifacts-"
"""A trial's files waiting for MLflow: ``<tmp>/sweep-artifacts-<pid>-<random>``, removed when its logger closes."""
STALE_SPOOL_S = 600.0


def remove_stale_spools(folder: str | None = None) -> list[Path]:
    """Remove the spools of trial processes that are gone (killed, so never closed); return them.

    Only a spool untouched for ``STALE_SPOOL_S`` whose process no longer exists: a live trial's,
    or one of a process this one cannot see, is left alone.
    """
    removed = []
    for spool in Path(folder or tempfile.gettempdir()).glob(f"{SPOOL_PREFIX}*-*"):
        pid = spool.name[len(SPOOL_PREFIX) :].split("-", 1)[0]
        try:
            if not pid.isdigit() or time.time() - spool.stat().st_mtime < STALE_SPOOL_S or _alive(int(pid)):
                continue
        except OSError:
            continue
        shutil.rmtree(spool, ignore_errors=True)
        removed.append(spool)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


class TrialLogger:
    """A trial process's side: step and epoch metrics, config, images, and its failure if any.

    Everything is sent by a background thread (see :class:`_Sender`). Step and epoch metrics are
    buffered and sent together, in batches of up to 1,000 values, when a step or an epoch ends
    ``every_s`` seconds or more after the last send (and on :meth:`flush`): a trial whose epochs
    take a second or more sends each epoch as it ends, a trial of short epochs one batch for
    several (one store write where it made one per epoch). What is buffered is also sent once
    ``every_s`` passes with no step or epoch ending (a trial that hangs, or whose process is about
    to be killed, keeps the epochs it validated). :meth:`close`, called on every way a trial
    ends, waits until all of it is delivered.

    With ``step_every_s`` > 0, steps closer together than that are thinned out: a step is recorded
    once ``step_every_s`` has passed since the last recorded one, and always when it is notable (a
    value not finite, an overflow skipped), and so is each epoch's last step; the newest
    :attr:`HELD` steps left out are recorded when the trial stops (a divergence, a would-be stop in
    ``observe`` mode, a failure), so the steps that led to a stop are all there. Storing a value
    costs the store about 55 us (SQLite here): a loop of 3 ms steps and 12 diagnostics spent about
    a sixth of its time recording every step.
    """

    BATCH = 1000
    HELD = 64
    """Steps left out by ``step_every_s`` that are kept, newest last, to be recorded after all if the trial stops."""

    def __init__(
        self, uri: str, run_id: str, patience: float = 900.0, every_s: float = 1.0, step_every_s: float = 0.0
    ) -> None:
        self.client = client(uri)
        self.run_id = run_id
        self.pending: list[Any] = []
        self.every_s = every_s
        self.sent_at = time.monotonic()
        self.step_every_s = step_every_s
        self.step_recorded_at = -math.inf
        self.last_recorded_step: int | None = None
        self.held: deque[list[Any]] = deque(maxlen=self.HELD)  # per left-out step, its Metric values
        self.sender = _Sender(patience)
        remove_stale_spools()
        self.spool = Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-"))
        self.spool_names = itertools.count()  # one folder per queued upload
        self.queued: dict[int, list[Any]] = {}  # metric batches submitted and not yet delivered
        self.lock = threading.Lock()
        self.numbers = itertools.count()
        self.logged: dict[str, int] = {}  # after a restart: per key, the last step already stored
        self.pending_lock = threading.RLock()  # the training thread buffers, the idle timer sends
        self.closed = threading.Event()
        self.timer = threading.Thread(target=self._send_when_idle, name="mlflow-idle-send", daemon=True)
        self.timer.start()

    def _send_when_idle(self) -> None:
        """Send what is buffered once ``every_s`` passed since the last send, whatever the trial is doing."""
        while not self.closed.wait(self.every_s):
            with self.pending_lock:
                if self.pending and time.monotonic() - self.sent_at >= self.every_s:
                    self._send_pending()

    def _submit_metrics(self, what: str, items: list[Any]) -> None:
        items = [m for m in items if m.step > self.logged.get(m.key, m.step - 1)]
        if not items:
            return
        with self.lock:
            number = next(self.numbers)
            self.queued[number] = items

        def send() -> None:
            self.client.log_batch(self.run_id, metrics=items)
            with self.lock:
                self.queued.pop(number, None)

        self.sender.submit(what, send)

    def undelivered(self) -> list[tuple[str, float, int, int]]:
        """Metrics logged and not yet confirmed stored, as ``(key, value, timestamp, step)``.

        A checkpoint keeps them, so that a trial restarted from it on another node can resend
        whatever the process that died never delivered (see :meth:`resume`).
        """
        with self.pending_lock, self.lock:
            batches = [list(batch) for _, batch in sorted(self.queued.items())]
            items = [m for batch in batches for m in batch] + list(self.pending)
        return [(m.key, m.value, m.timestamp, m.step) for m in items]

    def resume(self, undelivered: list[tuple[str, float, int, int]]) -> None:
        """Continue the run of a trial restarted from a checkpoint, losing and repeating nothing.

        The store keeps, per metric, the last step it has. What the checkpoint lists as
        undelivered beyond that is sent again; from then on, values at steps the store already
        has (the dead process had logged part of the epoch being rerun) are not sent twice.
        Relies on each metric's steps rising and on the sender delivering in order.
        """
        from mlflow.entities import Metric

        run = retry(lambda: self.client.get_run(self.run_id), "read run")
        self.logged = latest_steps(run)
        missing = [Metric(k, v, t, s) for k, v, t, s in undelivered if s > self.logged.get(k, s - 1)]
        self._submit_metrics("resend metrics", missing)
        for metric in missing:
            self.logged[metric.key] = max(self.logged.get(metric.key, metric.step), metric.step)

    def history(self, key: str) -> list[tuple[int, float]]:
        """Every ``(step, value)`` of a metric already in the store, by step."""
        found = retry(lambda: self.client.get_metric_history(self.run_id, key), f"read {key}")
        return sorted((int(m.step), float(m.value)) for m in found)

    def has_artifact(self, path: str) -> bool:
        """Whether the run already has an artifact at ``path`` (a top-level file)."""
        found = retry(lambda: self.client.list_artifacts(self.run_id), "list artifacts")
        return any(item.path == path for item in found)

    def add_step(self, step: int, metrics: dict[str, float]) -> None:
        """Buffer one optimizer step's metrics, or hold them back (see the class docstring).

        A step is recorded when ``step_every_s`` has passed since the last recorded one, and
        always when it is notable (a value not finite, an overflow skipped); the others are held:
        the newest :attr:`HELD` of them are recorded by :meth:`record_held` when the trial stops.
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if _numeric(v)]
        clock = time.monotonic()
        if self.step_every_s > 0 and clock - self.step_recorded_at < self.step_every_s and not _notable(metrics):
            self.held.append(values)
            return
        self.step_recorded_at, self.last_recorded_step = clock, step
        with self.pending_lock:
            self.pending.extend(values)
            self._send_if_due()

    def record_held(self) -> None:
        """Record the held-back steps too (the trial stops: the steps that led there are all recorded)."""
        with self.pending_lock:
            while self.held:
                self.pending.extend(self.held.popleft())
            self._send_if_due()

    def _record_epoch_end(self) -> None:
        """Record the epoch's last step if it was held back, so that each epoch's curve ends where it did."""
        if not self.held or not self.held[-1]:
            return
        step = self.held[-1][0].step
        if self.last_recorded_step is None or step > self.last_recorded_step:
            with self.pending_lock:
                self.pending.extend(self.held.pop())
            self.last_recorded_step = step

    def _send_if_due(self) -> None:
        if len(self.pending) >= self.BATCH or time.monotonic() - self.sent_at >= self.every_s:
            self._send_pending()

    def _send_pending(self) -> None:
        with self.pending_lock:
            self.sent_at = time.monotonic()
            while self.pending:
                chunk, self.pending = self.pending[: self.BATCH], self.pending[self.BATCH :]
                self._submit_metrics("log metrics", chunk)

    def flush(self, timeout: float = 0.0) -> bool:
        """Queue the buffered step metrics; wait up to ``timeout`` s for delivery; True if delivered."""
        self._send_pending()
        return self.sender.drain(timeout) if timeout > 0 else not self.sender.jobs.unfinished_tasks

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer the epoch metrics for ``step`` after the step metrics; send them all if it is time."""
        from mlflow.entities import Metric

        self._record_epoch_end()
        now = int(time.time() * 1000)
        with self.pending_lock:
            self.pending.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items() if _numeric(v))
            self._send_if_due()

    def log_text(self, text: str, path: str) -> None:
        """Queue ``text`` as an artifact file."""
        self.sender.submit(f"log {path}", partial(self.client.log_text, self.run_id, text, path))

    def log_texts(self, texts: dict[str, str]) -> None:
        """Queue several texts as artifact files (``{path: text}``), stored in one call."""
        folder = self._spooled()
        for path, text in texts.items():
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        what = f"log {', '.join(texts)}"
        self.sender.submit(what, partial(self.client.log_artifacts, self.run_id, str(folder)))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Upload a file from the trial's own process (so it arrives from any node).

        The file is copied first, so the caller may delete it at once.
        """
        copy = self._spooled() / path.name
        shutil.copy2(path, copy)
        self.sender.submit(f"log {path.name}", partial(self.client.log_artifact, self.run_id, str(copy), folder))

    def _spooled(self) -> Path:
        """A new empty folder in the spool, for files waiting to be sent."""
        folder = self.spool / str(next(self.spool_names))
        folder.mkdir(parents=True)
        return folder

    def set_tags(self, tags: dict[str, str]) -> None:
        """Queue tags for the run (one call)."""
        from mlflow.entities import RunTag

        items = [RunTag(key, value[:5000]) for key, value in tags.items()]
        self.sender.submit("tag run", partial(self.client.log_batch, self.run_id, tags=items))

    def spool_folder(self) -> Path:
        """A new empty folder to write a file into, then hand to :meth:`log_spooled` (no copy made)."""
        return self._spooled()

    def log_spooled(self, path: Path, folder: str | None = None) -> None:
        """Upload a file written into a :meth:`spool_folder` (which this logger removes when closed)."""
        self.sender.submit(f"log {path.name}", partial(self.client.log_artifact, self.run_id, str(path), folder))

    def warn(self, message: str) -> None:
        """Something went wrong that does not end the trial: a warning in the trial's log and a tag on its run."""
        log.warning("trial run %s: %s", self.run_id, message)
        self.sender.submit("tag warning", partial(self.client.set_tag, self.run_id, TAG_WARNING, message[:5000]))

    def log_failure(self, exc: BaseException) -> None:
        """Tag the run with the exception's one-line reason; store the traceback; record the held-back steps."""
        self.record_held()
        reason = failure_reason(exc)
        self.log_text("".join(traceback.format_exception(exc)), "traceback.txt")
        self.sender.submit("tag reason", partial(self.client.set_tag, self.run_id, TAG_REASON, reason))

    def close(self, timeout: float = 900.0) -> bool:
        """Deliver everything still queued (waiting up to ``timeout`` s); True if all went through."""
        self.closed.set()
        self._send_pending()
        delivered = self.sender.close(timeout) and not self.sender.failed
        shutil.rmtree(self.spool, ignore_errors=True)
        return delivered


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _notable(metrics: dict[str, float]) -> bool:
    """A step always recorded: a value that is not finite, or an overflow that skipped the update."""
    return any(_numeric(v) and (not math.isfinite(v) or (k.endswith("skipped") and v != 0)) for k, v in metrics.items())
