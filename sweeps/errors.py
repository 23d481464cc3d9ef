"""Reading why a Ray trial failed, and telling out-of-memory apart from other failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.cloudpickle as cloudpickle


def error_reason(trial: Any) -> str:
    """The one-line cause of a Ray trial's error, e.g. ``ValueError: bad kernel``; '' if unknown."""
    error: Any = None
    path = getattr(trial, "pickled_error_file", None)
    if path and Path(path).is_file():
        try:
            with open(path, "rb") as handle:
                error = cloudpickle.load(handle)
        except Exception:  # noqa: BLE001 - an unreadable error file still ends the trial
            error = None
    cause = getattr(error, "cause", None) or error
    if cause is None:
        return ""
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".strip()


def is_oom(reason: str) -> bool:
    """Whether a failure reason (``Type: message``) is an out-of-memory error."""
    kind = reason.split(":", 1)[0]
    return kind.endswith(("OutOfMemoryError", "MemoryError")) or "out of memory" in reason.lower()
