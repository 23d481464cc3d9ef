"""What a new sweep needs, checked before Ray starts or anything is made (light imports: no Ray, no MLflow)."""

from __future__ import annotations

from pathlib import Path

from sweeps.spec.sweep_spec import SweepSpec
from sweeps.store.sweep_dir import check_new_sweep, check_root
from sweeps.store.trial_storage import check_trial_storage, resolve_trial_storage
from sweeps.tracking.mlflow_client import resolve_tracking_uri
from sweeps.tracking.store_check import check_tracking_uri


def check_sweep_start(spec: SweepSpec, root: str | Path, name: str | None, tracking_uri: str | None) -> str:
    """Check a new sweep's inputs and return the resolved tracking URI; create nothing.

    The storage folder (a folder, or one that can be made, and writable), the sweep's name
    (one folder name, not taken in ``root``), its trial storage (a file written
    there and deleted), and the tracking URI (scheme, SQLite file or server, within a bounded
    time). Raises an ``InputError`` (one line) on the first problem.
    """
    check_root(root)
    if name is not None:
        check_new_sweep(root, name)
    if spec.trial_storage:
        check_trial_storage(resolve_trial_storage(spec.trial_storage))
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    return uri
