"""A failure in one line, and telling out-of-memory apart from other failures."""

from __future__ import annotations


def failure_reason(exc: BaseException) -> str:
    """An exception's one line, e.g. ``ValueError: bad kernel``."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:5000]


SWEEP_ENDING_ERRORS = ("MetricMissingError", "ReturnedEarlyError")
"""Failures of the trainer's contract with the sweep (its metric, its epochs): every trial would fail so."""


def ends_the_sweep(reason: str) -> bool:
    """Whether a trial's failure reason (``Type: message``) is one every trial would meet: the sweep stops on it."""
    return reason.split(":", 1)[0] in SWEEP_ENDING_ERRORS


def is_oom(reason: str) -> bool:
    """Whether a failure reason (``Type: message``) is an out-of-memory error."""
    kind = reason.split(":", 1)[0]
    return kind.endswith(("OutOfMemoryError", "MemoryError")) or "out of memory" in reason.lower()
