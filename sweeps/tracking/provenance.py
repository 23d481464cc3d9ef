"""Where a trial ran and from what: its environment (packages, host, device, git commit) and its trainer's source.

Runs in the trial's own process (so it describes the node the trial ran on).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from sweeps.spec.source_names import own_sources, trainer_file

PACKAGES = ("torch", "ray", "optuna", "mlflow", "numpy", "pyarrow", "image-sweeps")


def git_commit(folder: str | Path = ".") -> str:
    """The git commit of ``folder`` (with ``-dirty`` for uncommitted changes), or ''."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=folder, capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def trainer_commit(trainer: str) -> str:
    """The git commit of the folder that holds ``trainer``'s source, else of the working directory ('' if neither).

    A user who ran a built-in trainer of a git checkout from a folder outside it got ``git_commit: ''``.
    """
    try:
        from trainables.registry import load_trainer

        folder = source_folder(load_trainer(trainer))
    except Exception:  # noqa: BLE001 - provenance is best effort: no source file, the working directory's commit
        folder = ""
    return checkout_commit(folder)


def checkout_commit(folder: str) -> str:
    """The git commit of the checkout holding ``folder`` (a trainer's source), else of the working directory."""
    return (git_commit(folder) if folder else "") or git_commit(os.getcwd())


@lru_cache(maxsize=4)
def _environment(device: str, folder: str) -> tuple[str, str]:
    """:func:`environment` as indented JSON, and the git commit it names."""
    info = environment(device, folder)
    return json.dumps(info, indent=2, sort_keys=True), str(info.get("git_commit") or "")


def source_folder(trainer: Any) -> str:
    """The folder of the trainer's source file ('' if it has none)."""
    try:
        source = inspect.getsourcefile(trainer)
    except TypeError:
        return ""
    return str(Path(source).parent) if source else ""


def environment(device: str = "", folder: str = "") -> dict[str, Any]:
    """Python, packages, host, device and git commit of the running process.

    The commit is that of the checkout holding ``folder`` (the trainer's source), else of the
    working directory: trials of a git checkout's trainer, run from a folder outside it, had ''
    where the sweep's own record named the commit.
    """
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = ""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "packages": versions,
        "git_commit": checkout_commit(folder),
        "device": device,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # "": no GPU reserved, none seen
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def environment_json(device: str = "", folder: str = "") -> str:
    """:func:`environment` as indented JSON, worked out once per process, device and source folder.

    A reused trial process runs many trials; asking git and the package metadata again for each
    (two subprocesses, a scan of site-packages) cost more than a tiny trial's training.
    """
    return _environment(device, folder)[0]


def environment_commit(device: str = "", folder: str = "") -> str:
    """The git commit :func:`environment_json` names for the same arguments ('' if none), from its cached look."""
    return _environment(device, folder)[1]


Stamp = tuple[Path, int, int]
"""A file as last read: its path, modification time (ns) and size."""

_read_sources: dict[Path, tuple[tuple[Stamp, ...], dict[str, str]]] = {}
"""Per trainer file, its own sources as last read in this process, with the stamps of the files read."""


def _stamp(path: Path) -> Stamp | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return path, info.st_mtime_ns, info.st_size


def trainer_sources(trainer: Any) -> dict[str, str]:
    """The trainer's own source files by path relative to its folder (empty: no source).

    Its module and the modules it imports from below that folder
    (``sweeps.spec.source_names.own_sources``; nothing installed): what it takes to run it again.
    Read again only when one of those files changed since this process last read them: a reused
    trial process parsed them for every trial (2% of its CPU in a sweep of one-second trials).
    """
    path = trainer_file(trainer)
    if path is None:
        return {}
    cached = _read_sources.get(path)
    if cached is not None and all(_stamp(stamp[0]) == stamp for stamp in cached[0]):
        return dict(cached[1])
    parsed = own_sources(trainer)
    if not parsed:
        return {}
    folder = next(iter(parsed)).parent
    texts, stamps = {}, []
    for source in parsed:
        stamp = _stamp(source)
        try:
            texts[source.relative_to(folder).as_posix()] = source.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if stamp is not None:
            stamps.append(stamp)
    _read_sources[path] = (tuple(stamps), texts)
    return dict(texts)


def source_digests(trainer_name: str) -> dict[str, str]:
    """Each of the named trainer's own source files (as :func:`trainer_sources` reads them) by a short SHA-256.

    ``sweeps train`` compares an export's with the code it runs now: a user edited the trainer's data
    seed after the sweep and read a metric 0.28% off with no word of why. {} if it cannot be loaded.
    """
    from trainables.registry import load_trainer

    try:
        trainer = load_trainer(trainer_name)
    except Exception:  # noqa: BLE001 - provenance only: the trainer's own problems are reported where it runs
        return {}
    texts = trainer_sources(trainer)
    return {name: hashlib.sha256(text.encode()).hexdigest()[:16] for name, text in sorted(texts.items())}


def changed_sources(then: dict[str, str], now: dict[str, str]) -> list[str]:
    """The files whose digest differs between ``then`` and ``now`` (added and removed ones too), sorted."""
    return sorted(name for name in {*then, *now} if then.get(name) != now.get(name))
