"""A sweep's storage folder: its spec, metadata, Optuna study and Ray's trial records."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from sweeps.core.errors import InputError

DEFAULT_ROOT = "sweep_runs"


def go_on_options(storage: str | Path, cpus: object = None) -> str:
    """`` --storage DIR --cpus N``: what a command that goes on from a sweep repeats ('' for the defaults).

    Two users sharing a machine, each with ``--cpus 1``: the printed command left ``--cpus`` out,
    and the sweep it started would have taken the other's CPU.
    """
    where = "" if str(storage) == str(DEFAULT_ROOT) else f" --storage {shlex.quote(str(storage))}"
    return where + (f" --cpus {cpus}" if cpus else "")


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""A sweep's name: one folder name of safe characters (no ``/``, no ``..``, no spaces), at most 128."""


class SweepStoreError(InputError):
    """A sweep folder is missing, already exists, or is unreadable; or a sweep name is not allowed."""


@dataclass(frozen=True)
class SweepDir:
    """Paths inside ``<root>/<name>/``."""

    root: Path
    name: str

    @property
    def path(self) -> Path:
        """The sweep's folder."""
        return self.root / self.name

    @property
    def optuna_journal(self) -> Path:
        """The Optuna study's journal file (Optuna's ``JournalFileBackend``: one JSON line per write)."""
        return self.path / "optuna-journal.log"

    @property
    def optuna_db(self) -> Path:
        """Where a sweep made before the journal keeps its Optuna study (SQLite)."""
        return self.path / "optuna.db"

    @property
    def storage_location(self) -> str:
        """The study's storage as ``optuna-dashboard`` and ``optuna --storage`` take it.

        The journal file's path; a SQLite URL for a sweep made before the journal.
        """
        if self.optuna_db.is_file():
            return f"sqlite:///{self.optuna_db}"
        return str(self.optuna_journal)

    @property
    def spec_file(self) -> Path:
        """The spec as run, overrides applied."""
        return self.path / "spec.yaml"

    @property
    def meta_file(self) -> Path:
        """Where the sweep's metadata (tracking URI, parent run, metric) is kept."""
        return self.path / "sweep.json"

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Write the metadata atomically."""
        tmp = self.meta_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        tmp.replace(self.meta_file)

    def read_meta(self) -> dict[str, Any]:
        """Read the metadata."""
        try:
            return dict(json.loads(self.meta_file.read_text()))
        except (OSError, ValueError) as exc:
            raise SweepStoreError(f"cannot read {self.meta_file}: {exc}") from None


def default_name(spec_name: str) -> str:
    """A new sweep's name: the spec's name and the local time, e.g. ``vae-demo-20261124-013000``."""
    return f"{spec_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_sweep_name(name: str) -> str:
    """Return ``name`` if it is a sweep name: one path component of letters, digits, ``.``, ``_`` and ``-``.

    Raise SweepStoreError otherwise (``../x``, ``a/b``, an empty or hidden name, spaces, over 128
    characters): a sweep's folder is ``<storage>/<name>`` and nowhere else.
    """
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SweepStoreError(
            f"sweep name {name!r} is not allowed: use one folder name of letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit, at most 128 characters), e.g. vae-lr-sweep-1"
        )
    return name


def nearest_existing(path: Path) -> Path:
    """``path`` if it exists, else the nearest of its parents that does (where it would be made)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_root(root: str | Path) -> Path:
    """The storage folder, resolved; refuse one that is a file or cannot be made or written. Leaves nothing.

    Whether a folder can be made there is tried: a folder made and removed at once in the
    nearest one that exists (write permission alone says nothing to root, or in ``/proc``).
    """
    if "://" in str(root):
        raise SweepStoreError(
            f"storage {str(root)!r}: must be a folder on this machine, not a URL; pass another --storage"
        )
    path = Path(root).resolve()
    existing = nearest_existing(path)
    if not existing.is_dir():
        raise SweepStoreError(f"storage {str(root)!r}: {existing} is a file, not a folder; pass another --storage")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sweeps-probe-", dir=existing))
    except OSError as exc:
        raise SweepStoreError(
            f"storage {str(root)!r}: cannot make a folder in {existing} ({exc.strerror}); pass another --storage"
        ) from None
    return path


def check_new_sweep(root: str | Path, name: str) -> SweepDir:
    """The folder a new sweep ``name`` would get; refuse a bad name or one that exists. Creates nothing."""
    sweep = SweepDir(check_root(root), check_sweep_name(name))
    if sweep.path.exists():
        raise SweepStoreError(f"sweep {name!r} already exists in {sweep.root}; choose another --name")
    return sweep


def new_sweep_dir(root: str | Path, name: str, unique: bool = False) -> SweepDir:
    """Create a fresh sweep folder; refuse a bad name or one that already exists.

    With ``unique`` (a default name, e.g. two sweeps of one spec started in the same second), a
    name that exists gets a suffix instead: ``name-2``, ``name-3``, ...
    """
    check_sweep_name(name)
    root_path = Path(root).resolve()
    root_path.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000 if unique else 2):
        sweep = SweepDir(root_path, name if attempt == 1 else f"{name}-{attempt}")
        try:
            sweep.path.mkdir()  # atomic: of two sweeps asking for one name, one gets it
        except FileExistsError:
            continue
        return sweep
    raise SweepStoreError(f"sweep {name!r} already exists in {root_path}; choose another --name")


def open_sweep_dir(root: str | Path, name: str) -> SweepDir:
    """Find an existing sweep by name (a sweep in ``root``) or by the path of its folder."""
    candidate = Path(name)
    if (candidate / "sweep.json").is_file():
        candidate = candidate.resolve()
        return SweepDir(candidate.parent, candidate.name)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SweepStoreError(
            f"{name!r} is neither a sweep's folder (it holds no sweep.json) nor a sweep name "
            "(one folder name of letters, digits, '.', '_' and '-'); 'sweeps list' shows the sweeps"
        )
    sweep = SweepDir(Path(root).resolve(), name)
    if not sweep.meta_file.is_file() and sweep.path.is_dir() and any(sweep.path.iterdir()):
        raise SweepStoreError(
            f"{sweep.path} holds no sweep.json (moved or deleted?), which names the sweep's MLflow store and "
            "parent run: without it the sweep cannot be opened; its Optuna journal and spec.yaml are left as they are"
        )
    if not sweep.meta_file.is_file():
        known = sorted(p.parent.name for p in sweep.root.glob("*/sweep.json")) if sweep.root.is_dir() else []
        hint = f" (sweeps there: {', '.join(known[-5:])})" if known else ""
        raise SweepStoreError(f"no sweep {name!r} in {sweep.root}{hint}")
    return sweep


def driver_state(driver: dict[str, Any]) -> str:
    """``alive``, ``dead`` or ``unknown``: the process recorded as a sweep's driver (``sweep.json``'s ``driver``).

    Only checkable on its own host: elsewhere, or without a pid, ``unknown``.
    """
    pid = driver.get("pid")
    if not isinstance(pid, int) or driver.get("host") != socket.gethostname():
        return "unknown"
    if pid == os.getpid():
        return "dead"  # this process is not that sweep's driver any more (a resume in it)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "alive"
    stat = Path(f"/proc/{pid}/stat")
    try:
        return "dead" if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z" else "alive"  # a zombie has ended
    except (OSError, IndexError):
        return "alive"


DRIVER_LOCK = "driver.lock"
"""The file in a sweep's folder that its driver holds locked while it runs."""
_DRIVING: dict[Path, FileLock] = {}


def claim_driver(sweep: SweepDir) -> None:
    """Make this process the sweep's one driver until it ends or calls :func:`release_driver`.

    An exclusive lock on ``<sweep>/driver.lock`` (``flock``): the kernel drops it when its process
    ends, a ``kill -9`` too, so a dead driver never blocks a resume. The recorded driver's pid alone
    let two ``sweeps resume`` started a moment apart both pass (neither had written its pid yet):
    both ran the sweep and logged every epoch twice. A SweepStoreError (one line) if another
    process holds it; nothing when this process does already.
    """
    key = sweep.path.resolve()
    if key in _DRIVING:
        return
    lock = FileLock(str(key / DRIVER_LOCK), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise SweepStoreError(
            f"sweep {sweep.name!r} is driven by another process right now (a sweeps run or resume holds "
            f"{key / DRIVER_LOCK}); wait for it to end, or stop it first"
        ) from None
    _DRIVING[key] = lock


def release_driver(sweep: SweepDir) -> None:
    """Let go of the sweep's driver lock (its driver is done with it)."""
    lock = _DRIVING.pop(sweep.path.resolve(), None)
    if lock is not None:
        lock.release()
