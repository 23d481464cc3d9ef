"""A failure in one line, and telling out-of-memory apart from other failures."""

from __future__ import annotations

import os


def failure_reason(exc: BaseException) -> str:
    """An exception's one line, e.g. ``ValueError: bad kernel`` (see :func:`message_line`).

    A file not found by a relative path says the folder it was looked for in (a trial's is
    where ``sweeps run`` started, not the spec's folder).
    """
    message = message_line(str(exc))
    filename = getattr(exc, "filename", None) if isinstance(exc, FileNotFoundError) else None
    if isinstance(filename, str) and filename and not os.path.isabs(filename):
        message += f" (looked for in {os.getcwd()})"
    return (f"{type(exc).__name__}: {message}" if message else type(exc).__name__)[:5000]


def message_line(text: str) -> str:
    r"""A message's first line that says something: blank lines skipped, a heading (``...:``) joined to what follows.

    ``Error(s) in loading state_dict for Net:\n\tMissing key(s) ...`` reads as one line with the keys.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else ""
    for more in lines[1:3]:
        if not line.endswith(":"):
            break
        line = f"{line} {more}"
    return line


SWEEP_ENDING_ERRORS = (
    "MetricMissingError",
    "ReportCallError",
    "RunCallError",
    "MetricsTypeError",
    "CheckpointSaveError",
)
"""Failures every trial would meet: the trainer does not produce the spec's metric, its loop numbers
``run.report``'s epochs wrongly (from 0, say) or passes ``run.step``/``run.report`` a value of the
wrong kind, its ``train_epoch``/``validate`` returns no dict, or its ``state_dict()`` cannot be
pickled into a checkpoint.
(A loop that returns early is not one: it may do so only for some configs, as a loop's own guard
against a NaN loss does.)"""


def ends_the_sweep(reason: str) -> bool:
    """Whether a trial's failure reason (``Type: message``) is one every trial would meet: the sweep stops on it."""
    return reason.split(":", 1)[0] in SWEEP_ENDING_ERRORS


def is_oom(reason: str) -> bool:
    """Whether a failure reason (``Type: message``) is an out-of-memory error."""
    kind = reason.split(":", 1)[0]
    return kind.endswith(("OutOfMemoryError", "MemoryError")) or "out of memory" in reason.lower()
