"""Which spec file a sweep started from, and whether it changed since (a resume runs the spec it started with)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def spec_stamp(source: str) -> dict[str, str] | None:
    """``{"path", "sha256"}`` of the spec file at ``source`` (None: no such file, e.g. a spec built in code)."""
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return {"path": str(path.resolve()), "sha256": hashlib.sha256(data).hexdigest()}


def edited_since(stamp: Any) -> str:
    """The path of the stamped spec file when it now holds something else ('' when unchanged, gone or unknown).

    A user killed a sweep, edited its spec (fewer epochs, a narrower range) and resumed it: the
    resume ran the spec the sweep had started with and drew values outside the new range, saying nothing.
    """
    if not isinstance(stamp, dict) or not isinstance(stamp.get("path"), str):
        return ""
    now = spec_stamp(stamp["path"])
    return stamp["path"] if now is not None and now["sha256"] != stamp.get("sha256") else ""
