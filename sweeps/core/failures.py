"""A failure in one line, and telling out-of-memory apart from other failures."""

from __future__ import annotations


def failure_reason(exc: BaseException) -> str:
    """An exception's one line, e.g. ``ValueError: bad kernel``."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:5000]


def is_oom(reason: str) -> bool:
    """Whether a failure reason (``Type: message``) is an out-of-memory error."""
    kind = reason.split(":", 1)[0]
    return kind.endswith(("OutOfMemoryError", "MemoryError")) or "out of memory" in reason.lower()
