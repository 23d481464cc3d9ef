"""Trial storage: where trials write checkpoints and Ray Tune its records, reachable from every node.

By default that is the sweep's own folder on the driver, which is enough on one machine. On a
cluster it must be storage every node reaches: a URI pyarrow opens (``s3://bucket/prefix``,
``gs://...``, ``hdfs://...``, ``abfs://...``) or a path every node mounts (NFS, EFS). The
driver's own files (spec, metadata, Optuna study, report) stay in the sweep folder either way.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from sweeps.store.sweep_dir import SweepStoreError


def resolve_trial_storage(value: str) -> str:
    """A URI as given; a plain path made absolute (trials run in other folders and on other nodes)."""
    if "://" in value:
        return value.rstrip("/")
    return str(Path(value).expanduser().resolve())


def check_trial_storage(uri: str) -> None:
    """Create the storage folder and write and delete a file there; raise a one-line error if that fails.

    Run on the driver before the sweep records anything. It proves the driver can write there;
    that the workers can too is Ray's check when the first trial starts.
    """
    import pyarrow.fs

    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
        filesystem.create_dir(path, recursive=True)
        probe = f"{path.rstrip('/')}/.sweeps-write-check-{uuid.uuid4().hex}"
        with filesystem.open_output_stream(probe):
            pass
        filesystem.delete_file(probe)
    except Exception as exc:  # noqa: BLE001 - any failure means trials could not checkpoint there
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        raise SweepStoreError(f"trial_storage {uri!r}: cannot write there: {reason}") from None
