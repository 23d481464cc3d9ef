"""The driver's MLflow records: one parent run per sweep, one nested child run per trial, and how each ended.

The driver creates the runs and closes them with their final status; each trial's own process
logs its metrics and artifacts to its run (``sweeps.tracking.trial_logger``), so artifacts arrive
from any node.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Any

from sweeps.core.keys import (
    COMPLETED,
    FINAL_KEY,
    ROLE_AUDIT,
    ROLE_PARENT,
    ROLE_RESCUE,
    ROLE_TRIAL,
    RUNNING,
    TAG_AUDIT_OF,
    TAG_AUDIT_RUN,
    TAG_DIVERGENCE_STEP,
    TAG_DRAWN_BY,
    TAG_EPOCHS,
    TAG_NAME,
    TAG_OPTUNA_NUMBER,
    TAG_PARENT_RUN,
    TAG_RAY_TRIAL_ID,
    TAG_REASON,
    TAG_RESCUE_OF,
    TAG_RESCUED_BY,
    TAG_RESTARTS,
    TAG_ROLE,
    TAG_SIGNAL,
    TAG_STATUS,
    TAG_TRIAL,
    TAG_WOULD_STOP_SIGNAL,
    TAG_WOULD_STOP_STEP,
)
from sweeps.core.records import TrialRecord
from sweeps.tracking.mlflow_client import (
    EXPERIMENT_KIND,
    RUN_STATUS,
    artifact_root,
    client,
    param_text,
    retry,
    run_name,
)


class SweepTracker:
    """The driver's side: experiment, parent run, child runs and their final status."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = client(uri)
        self.experiment_id = ""
        self.parent_run_id = ""

    @classmethod
    def of_sweep(cls, meta: dict[str, Any]) -> SweepTracker:
        """The tracker of an existing sweep, from its ``sweep.json`` (tracking URI, experiment, parent run)."""
        tracker = cls(str(meta["tracking_uri"]))
        tracker.experiment_id, tracker.parent_run_id = str(meta["experiment_id"]), str(meta["parent_run_id"])
        return tracker

    def trial_runs(self) -> list[Any]:
        """Every MLflow run under the sweep's parent run (trials, rescues, audits)."""
        runs: list[Any] = []
        token = None
        query = f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'"
        while True:
            page = retry(
                partial(self.client.search_runs, [self.experiment_id], query, max_results=1000, page_token=token),
                "list trial runs",
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def logged_epochs(self, run_id: str, metric: str) -> int:
        """The last epoch for which run ``run_id`` holds ``metric`` (its step), 0 if none."""
        return max((epoch for epoch, _ in self.logged_history(run_id, metric)), default=0)

    def logged_history(self, run_id: str, metric: str) -> list[tuple[int, float]]:
        """Every ``(epoch, value)`` of ``metric`` that run ``run_id`` holds, by epoch (its step)."""
        history = retry(lambda: self.client.get_metric_history(run_id, metric), "read metric history")
        return sorted((int(m.step), float(m.value)) for m in history)

    def latest_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of each metric run ``run_id`` holds."""
        return dict(retry(lambda: self.client.get_run(run_id), "read run metrics").data.metrics)

    def would_stop(self, run_id: str) -> str:
        """The observe-mode would-be stop the trial tagged on its run (``signal@step``; '' if none).

        A trial whose process died, or was ended, never reported it to the driver.
        """
        tags = retry(lambda: self.client.get_run(run_id), "read run tags").data.tags
        signal = tags.get(TAG_WOULD_STOP_SIGNAL, "")
        return f"{signal}@{tags.get(TAG_WOULD_STOP_STEP, '?')}" if signal else ""

    def start(self, experiment: str, sweep: str, spec_text: str, params: dict[str, Any]) -> str:
        """Create (or reuse) the experiment and start the sweep's parent run; return its id."""
        found = retry(lambda: self.client.get_experiment_by_name(experiment), "get experiment")
        if found is None:
            self.experiment_id = retry(partial(self._create_experiment, experiment), "create experiment")
        else:
            self.experiment_id = found.experiment_id
            for key, value in EXPERIMENT_KIND.items():
                retry(partial(self.client.set_experiment_tag, self.experiment_id, key, value), "tag experiment")
        tags = {TAG_NAME: sweep, TAG_ROLE: ROLE_PARENT, TAG_STATUS: RUNNING}
        run = retry(lambda: self.client.create_run(self.experiment_id, tags=tags, run_name=sweep), "create parent run")
        self.parent_run_id = run.info.run_id
        self.log_params(self.parent_run_id, params)
        retry(lambda: self.client.log_text(self.parent_run_id, spec_text, "spec.yaml"), "log spec")
        return self.parent_run_id

    def _create_experiment(self, experiment: str) -> str:
        """Create the experiment; if another sweep started at the same time created it first, use that one."""
        try:
            return str(
                self.client.create_experiment(
                    experiment, artifact_location=artifact_root(self.uri), tags=EXPERIMENT_KIND
                )
            )
        except Exception:
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                raise
            return str(found.experiment_id)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log parameters in one batch."""
        from mlflow.entities import Param

        items = [Param(key, param_text(value)) for key, value in params.items()]
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            retry(partial(self.client.log_batch, run_id, params=chunk), "log params")

    def create_trial_run(
        self,
        sweep: str,
        number: int,
        ray_id: str,
        params: dict[str, Any],
        sampled: dict[str, Any],
        rescue_of: tuple[str, str] | None = None,
        drawn_by: str | None = None,
        also: dict[str, str] | None = None,
    ) -> str:
        """Create the trial's child run under the parent with every resolved parameter.

        ``rescue_of`` is ``(label, run id)`` of the diverged trial a precision rescue re-runs;
        the two runs are linked by tags both ways. ``drawn_by``: how the sampler drew the values
        (``sweeps.store.study.drawn_by``), tagged when given; ``also``: more tags.
        """
        tags = {
            TAG_PARENT_RUN: self.parent_run_id,
            TAG_NAME: sweep,
            TAG_ROLE: ROLE_TRIAL,
            TAG_TRIAL: str(number),
            TAG_STATUS: RUNNING,
            TAG_RAY_TRIAL_ID: ray_id,
            TAG_OPTUNA_NUMBER: str(number),
        }
        if drawn_by is not None:
            tags[TAG_DRAWN_BY] = drawn_by
        tags.update(also or {})
        name = run_name(number, sampled)
        if rescue_of is not None:
            tags.update({TAG_TRIAL: f"{number}r", TAG_RESCUE_OF: rescue_of[1], TAG_ROLE: ROLE_RESCUE})
            tags.pop(TAG_OPTUNA_NUMBER)
            name = f"{rescue_of[0]}r rescue " + name.split(" ", 1)[-1]
        run = retry(lambda: self.client.create_run(self.experiment_id, tags=tags, run_name=name), "create trial run")
        self.log_params(run.info.run_id, params)
        if rescue_of is not None:
            retry(partial(self.client.set_tag, rescue_of[1], TAG_RESCUED_BY, run.info.run_id), "link rescue")
        return str(run.info.run_id)

    def create_audit_run(self, sweep: str, number: int, params: dict[str, Any], audited: tuple[str, str]) -> str:
        """A run under the parent that re-runs a stopped trial (``audited``: its label and run id), linked both ways."""
        tags = {
            TAG_PARENT_RUN: self.parent_run_id,
            TAG_NAME: sweep,
            TAG_ROLE: ROLE_AUDIT,
            TAG_TRIAL: f"{number}a",
            TAG_STATUS: RUNNING,
            TAG_AUDIT_OF: audited[1],
        }
        name = f"{audited[0]}a audit of a stopped trial"
        run = retry(lambda: self.client.create_run(self.experiment_id, tags=tags, run_name=name), "create audit run")
        self.log_params(run.info.run_id, params)
        retry(partial(self.client.set_tag, audited[1], TAG_AUDIT_RUN, run.info.run_id), "link audit")
        return str(run.info.run_id)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Tag a run (one call)."""
        from mlflow.entities import RunTag

        items = [RunTag(key, value[:5000]) for key, value in tags.items()]
        retry(lambda: self.client.log_batch(run_id, tags=items), "tag run")

    def finish_run(
        self,
        run_id: str,
        status: str,
        reason: str = "",
        tags: dict[str, str] | None = None,
        final: tuple[float, int] | None = None,
        end_time: int | None = None,
    ) -> None:
        """Tag a run with its final status (reason and other tags too), and end it (at ``end_time`` ms, else now).

        ``final``: a completed trial's ``(metric value, epochs)``, logged as :data:`FINAL_KEY`.
        """
        from mlflow.entities import Metric, RunTag

        items = {TAG_STATUS: status, **({TAG_REASON: reason[:5000]} if reason else {}), **(tags or {})}
        run_tags = [RunTag(key, value) for key, value in items.items()]
        stamp = end_time or int(time.time() * 1000)
        metrics = [Metric(FINAL_KEY, final[0], stamp, final[1])] if final is not None else []
        retry(lambda: self.client.log_batch(run_id, metrics=metrics, tags=run_tags), "tag run")
        retry(lambda: self.client.set_terminated(run_id, RUN_STATUS.get(status, "FINISHED"), end_time), "end run")

    def finish_trial(self, record: TrialRecord, end_time: int | None = None) -> None:
        """End a trial's run with how it ended: status, reason, epochs, restarts, divergence signal and step.

        ``end_time`` (ms): when it ended, where that was before now (a run closed by ``sweeps resume``).
        """
        tags = {TAG_EPOCHS: str(record.epochs)}
        if record.restarts:
            tags[TAG_RESTARTS] = str(record.restarts)
        if record.signal:
            tags.update({TAG_SIGNAL: record.signal, TAG_DIVERGENCE_STEP: str(record.diverged_at)})
        value = record.value if record.status == COMPLETED else None
        final = (float(value), record.epochs) if value is not None and math.isfinite(value) else None
        self.finish_run(record.run_id, record.status, record.reason, tags, final, end_time)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        """Store ``text`` as an artifact file of ``run_id``."""
        retry(lambda: self.client.log_text(run_id, text, path), f"log {path}")

    def log_artifacts(self, run_id: str, folder: Path, into: str) -> None:
        """Upload a folder's files as artifacts of ``run_id`` under ``into``."""
        retry(lambda: self.client.log_artifacts(run_id, str(folder), into), f"log {into}")

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        """Upload a file as an artifact of ``run_id``."""
        retry(lambda: self.client.log_artifact(run_id, str(path), folder), f"log {path.name}")
