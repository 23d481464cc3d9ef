"""Writing a user's output file whole or not at all, and the disk errors a command reports in one line."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}
"""OSErrors of the disk rather than of the command: no space, a quota, a read-only or failing disk, a file too big."""


class CommandError(Exception):
    """A command failed after it began (the disk filled, a file could not be written).

    Its message is one line; the ``sweeps`` command prints it as ``error: ...`` and exits 1.
    """


def disk_error_line(exc: OSError) -> str | None:
    """One line for a disk error (``No space left on device: /path``); None for any other OSError."""
    if exc.errno not in DISK_ERRNOS:
        return None
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or os.strerror(exc.errno or 0)}{where}"


@contextlib.contextmanager
def whole_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; moved onto ``path`` only when the block ends without error.

    A failed write (a full disk, Ctrl-C) leaves ``path`` as it was, and no partial file: a user's
    earlier ``best.yaml`` or ``model.pt`` is never replaced by an empty one.
    """
    target = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(handle)
    part = Path(name)
    try:
        yield part
        # the mode the user's file had, else a new file's usual one (mkstemp's is 0600)
        os.chmod(part, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


def write_whole(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write`` on a temporary path beside ``path``, then move it there (see :func:`whole_file`).

    An OSError of the disk, or a RuntimeError from a writer such as ``torch.save`` (which says
    ``unexpected pos 64 vs 0`` when the disk fills), becomes a :class:`CommandError` naming ``path``.
    """
    try:
        with whole_file(path) as part:
            write(part)
    except OSError as exc:
        line = disk_error_line(exc)
        if line is None:
            raise
        raise CommandError(f"could not write {path}: {exc.strerror or exc}; nothing was written there") from None
    except RuntimeError as exc:
        said = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CommandError(f"could not write {path} (is the disk full?): {said}; nothing was written there") from None
