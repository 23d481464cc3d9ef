"""A sweep's storage folder: its spec, metadata, Optuna study and Ray's trial records."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_ROOT = "sweep_runs"


class SweepStoreError(ValueError):
    """A sweep folder is missing, already exists, or is unreadable."""


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


def new_sweep_dir(root: str | Path, name: str) -> SweepDir:
    """Create a fresh sweep folder; refuse one that already exists."""
    sweep = SweepDir(Path(root).resolve(), name)
    if sweep.path.exists():
        raise SweepStoreError(f"sweep {name!r} already exists in {sweep.root}; choose another --name")
    sweep.path.mkdir(parents=True)
    return sweep


def open_sweep_dir(root: str | Path, name: str) -> SweepDir:
    """Find an existing sweep by name (or a path to its folder)."""
    candidate = Path(name)
    if (candidate / "sweep.json").is_file():
        candidate = candidate.resolve()
        return SweepDir(candidate.parent, candidate.name)
    sweep = SweepDir(Path(root).resolve(), name)
    if not sweep.meta_file.is_file():
        known = sorted(p.parent.name for p in sweep.root.glob("*/sweep.json")) if sweep.root.is_dir() else []
        hint = f" (sweeps there: {', '.join(known[-5:])})" if known else ""
        raise SweepStoreError(f"no sweep {name!r} in {sweep.root}{hint}")
    return sweep
