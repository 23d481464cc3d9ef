"""Small shared helpers for the tests: sweep specs of the toy trainer, spec files, tiny trainers, MLflow runs.

Specs are plain dicts, edited with :func:`changed` (``budget__trials=8`` sets one key inside a
section, ``asha=False`` replaces a whole key, ``seed=None`` removes one), written with
:func:`write_spec` and read back with ``load_spec`` as a user's file would be. Heavy imports
(``sweeps``, ``mlflow``, ``trainables``) stay inside the functions: ``tests/cluster_sweep.py``
imports this module, and ``benchmarks/node_failure.py`` imports that one.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from sweeps.spec.sweep_spec import SweepSpec

ROOT = Path(__file__).resolve().parent.parent
TOY_TRAINER = "tests.toy_trainer:ToyTrainer"  # imported by path in trial processes: keep the module where it is
TRIAL_RUNS = "tags.`sweep.role` = 'trial'"  # MLflow filter for a sweep's trial runs (not the parent, not rescues)

# Trainer configs small enough for a CPU test: a few tiny images, narrow networks.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "vae": {"image_size": 16, "train_images": 64, "val_images": 32, "width": 4, "batch_size": 16, "latent_dim": 4},
    "sr_gan": {
        "image_size": 16,
        "scale": 2,
        "train_images": 32,
        "val_images": 16,
        "batch_size": 16,
        "width": 8,
        "blocks": 1,
        "d_width": 4,
    },
    "translation_gan": {
        "image_size": 16,
        "train_images": 32,
        "val_images": 16,
        "batch_size": 16,
        "width": 8,
        "depth": 2,
        "d_width": 4,
        "init_scale": 1024.0,  # the default 65536 overflows every fp16 step of so short a run
    },
    "examples.denoiser:DenoiserTrainer": {},  # a user's own loop, adapted (no precision field)
}


def changed(data: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with ``changes``: ``a__b=v`` sets ``data["a"]["b"]``; ``None`` removes the key.

    A change replaces what is at its key whole: ``asha={"enabled": False}`` drops the toy's
    ``grace_period``; ``asha__enabled=False`` would keep it.
    """
    data = copy.deepcopy(data)
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return data


def toy_spec(name: str = "toy", **changes: Any) -> dict[str, Any]:
    """The sweep of ``tests.toy_trainer:ToyTrainer`` most sweep tests run, with :func:`changed` applied.

    8 trials of 4 epochs one at a time, seed 0, ASHA (grace period 1, reduction factor 2), TPE
    after 4 random trials, over ``lr`` (log, 1e-5..1) and ``width`` (1..8); ``val_loss`` minimised.
    """
    spec = {
        "name": name,
        "trainer": TOY_TRAINER,
        "metric": {"name": "val_loss", "mode": "min"},
        "seed": 0,
        "budget": {"trials": 8, "epochs": 4, "concurrency": 1},
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "search": {"n_startup_trials": 4},
        "params": {
            "lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
            "width": {"type": "int", "low": 1, "high": 8},
        },
    }
    return changed(spec, **changes)


def minimal_toy_spec(name: str = "toy", **changes: Any) -> dict[str, Any]:
    """The least a spec of the toy trainer needs: a metric and one parameter (``lr``, 1e-4..1); the rest defaults."""
    spec = {
        "name": name,
        "trainer": TOY_TRAINER,
        "metric": {"name": "val_loss", "mode": "min"},
        "params": {"lr": {"type": "float", "low": 1e-4, "high": 1.0}},
    }
    return changed(spec, **changes)


def write_spec(folder: Path, data: dict[str, Any] | str, name: str = "spec.yaml") -> Path:
    """Write a spec (a dict, dumped as YAML; or YAML text as it is) to ``folder/name``; return its path."""
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def spec_from_dict(data: dict[str, Any], source: str = "<test>") -> SweepSpec:
    """Validate a spec dict without a file (``source`` stands for the file name in error messages)."""
    from sweeps.spec.sweep_spec import validate_spec

    return validate_spec(data, source, [])


def trial_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """The MLflow runs of an experiment's trials: tagged ``sweep.role`` = ``trial``."""
    return client.search_runs([experiment_id], TRIAL_RUNS)


# Ray's switch (ray_constants.ENABLE_RAY_CLUSTER) that keeps a Ray's node address on 127.0.0.1.
LOOPBACK_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def project_env(**extra: str) -> dict[str, str]:
    """This process's environment with the project first on ``PYTHONPATH`` (``tests.*`` importable), plus ``extra``."""
    return {
        **os.environ,
        **extra,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sweeps ARGS`` in ``cwd`` (5 minutes at most), its output captured as text."""
    command = [sys.executable, "-m", "sweeps", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def parents() -> dict[int, int]:
    """Every live process's parent, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":  # a zombie has ended
            found[int(entry.name)] = int(fields[1])
    return found


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (not ``pid`` itself), from /proc."""
    tree = parents()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in tree.items() if parent in frontier} - found
        found |= frontier
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on just now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiny_trainer(name: str, **overrides: Any) -> Any:
    """A trainer built from :data:`TINY_CONFIGS` and ``overrides``.

    A ``precision`` override for a trainer without that setting skips the test, unless it is
    ``fp16`` (then it is dropped and the trainer runs as it is).
    """
    import dataclasses

    import pytest

    from trainables import build_config, load_trainer

    cls = load_trainer(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    if "precision" in overrides and "precision" not in fields:
        if overrides["precision"] != "fp16":
            pytest.skip(f"{name} has no precision setting")
        del overrides["precision"]
    return cls(build_config(cls.Config, {**TINY_CONFIGS[name], **overrides}))


def run_epochs(trainer: Any, epochs: int) -> list[dict[str, float]]:
    """Train and validate ``epochs`` times; each epoch's train and validation metrics in one dict."""
    return [{**trainer.train_epoch(), **trainer.validate()} for _ in range(epochs)]
