"""What the report reads back from MLflow: trials' stop and audit tags, sample images, rescues' curves.

Every read is one attempt (no retries: the report runs at the end of every sweep and must stay
quick), and a failed read leaves its part of the report out rather than failing the report.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from sweeps.core.keys import TAG_AUDIT_VERDICT, TAG_WOULD_STOP_SIGNAL
from sweeps.tracking.mlflow_client import client

log = logging.getLogger(__name__)


def tagged_runs(uri: str, experiment_id: str, parent_run_id: str) -> dict[str, dict[str, str]] | None:
    """``{run id: tags}`` of the sweep's trials that carry a would-be stop or an audit verdict.

    Two filtered searches (one per tag) that return only those runs: usually none. None when the
    store could not be read.
    """
    if not (uri and experiment_id and parent_run_id):
        return None
    found: dict[str, dict[str, str]] = {}
    try:
        store = client(uri)
        for tag in (TAG_WOULD_STOP_SIGNAL, TAG_AUDIT_VERDICT):
            query = f"tags.`mlflow.parentRunId` = '{parent_run_id}' AND tags.`{tag}` LIKE '%'"
            for run in store.search_runs([experiment_id], query, max_results=5000):
                found[run.info.run_id] = dict(run.data.tags)
    except Exception as exc:  # noqa: BLE001 - the report goes on without these tags
        log.warning("could not read the trials' stop and audit tags: %s", exc)
        return None
    return found


def metric_history(uri: str, run_id: str, metric: str) -> list[tuple[int, float]]:
    """Every ``(step, value)`` of ``metric`` in a run (for an epoch metric, the step is the epoch)."""
    try:
        return sorted((int(m.step), float(m.value)) for m in client(uri).get_metric_history(run_id, metric))
    except Exception as exc:  # noqa: BLE001 - that trial's curve is left out
        log.warning("could not read %s of run %s: %s", metric, run_id, exc)
        return []


def download_images(uri: str, wanted: list[tuple[str, str, str]], folder: Path) -> dict[str, Path]:
    """Download ``(name, run id, artifact path)`` images into ``folder`` as ``<name>.png``; those found."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in the log
    store = client(uri)
    found: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="sweep-samples-") as scratch:
        for name, run_id, path in wanted:
            try:
                local = Path(store.download_artifacts(run_id, path, str(Path(scratch) / name)))
            except Exception:  # noqa: BLE001 - a trainer without sample_grid logs no images
                continue
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{name}.png"
            shutil.move(str(local), target)
            found[name] = target
    return found
