"""What a spec's ``trial_storage`` may be, checked as written (the store checks that it can be written)."""

from __future__ import annotations

from typing import Any

SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def storage_problem(value: Any) -> str:
    """What is wrong with a ``trial_storage`` value as written, without touching it ('' if nothing)."""
    if not isinstance(value, str) or not value.strip():
        return f"must be a URI (s3://bucket/prefix) or a path every node reaches, got {value!r}"
    if "://" not in value:
        return ""
    scheme, _, rest = value.partition("://")
    if scheme.lower() not in SCHEMES:
        return f"unknown scheme '{scheme}://' (accepted: {', '.join(s + '://' for s in SCHEMES)}, or a path)"
    if scheme.lower() == "file" and not rest.startswith("/"):
        return f"a file:// URI needs an absolute path (file:///data/sweeps), got {value!r}"
    if not rest.strip("/"):
        return f"{value!r} names no bucket or folder"
    return ""
