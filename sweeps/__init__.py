"""Hyperparameter sweeps for PyTorch image models: Ray Tune runs the trials, Optuna searches, MLflow records.

The public API (each name is imported on first use, so ``import sweeps`` stays cheap)::

    import sweeps

    spec = sweeps.load_spec("search_spaces/vae_demo.yaml", overrides=["budget.trials=4"])
    result = sweeps.run_sweep(spec)                      # local Ray unless one is running
    sweep = sweeps.open_sweep("sweep_runs", result.sweep.name)
    best = sweeps.best_configs(sweep, top_k=3)           # what ``sweeps export`` writes
    sweeps.resume_sweep("sweep_runs", "vae-demo-...")    # finish a sweep whose driver died

``sweeps.StopTrial`` is what ``run.report`` / ``run.step`` raise in a function trainer when the
sweep ends its trial (``trainables.protocol``; importing it loads neither Ray nor MLflow).

See ``docs/architecture.md`` for the packages behind these names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sweeps.version import __version__

if TYPE_CHECKING:
    from sweeps.engine.launch import run_sweep
    from sweeps.engine.resume import resume_sweep
    from sweeps.engine.runner import SweepResult
    from sweeps.results.export import best_configs
    from sweeps.spec.sweep_spec import SpecError, SweepSpec, load_spec
    from sweeps.store.sweep_dir import SweepDir, SweepStoreError
    from sweeps.store.sweep_dir import open_sweep_dir as open_sweep
    from trainables.protocol import StopTrial

_PUBLIC = {
    "SpecError": ("sweeps.spec.sweep_spec", "SpecError"),
    "StopTrial": ("trainables.protocol", "StopTrial"),
    "SweepSpec": ("sweeps.spec.sweep_spec", "SweepSpec"),
    "load_spec": ("sweeps.spec.sweep_spec", "load_spec"),
    "run_sweep": ("sweeps.engine.launch", "run_sweep"),
    "SweepResult": ("sweeps.engine.runner", "SweepResult"),
    "resume_sweep": ("sweeps.engine.resume", "resume_sweep"),
    "open_sweep": ("sweeps.store.sweep_dir", "open_sweep_dir"),
    "SweepDir": ("sweeps.store.sweep_dir", "SweepDir"),
    "SweepStoreError": ("sweeps.store.sweep_dir", "SweepStoreError"),
    "best_configs": ("sweeps.results.export", "best_configs"),
}
__all__ = [
    "SpecError",
    "StopTrial",
    "SweepDir",
    "SweepResult",
    "SweepSpec",
    "SweepStoreError",
    "__version__",
    "best_configs",
    "load_spec",
    "open_sweep",
    "resume_sweep",
    "run_sweep",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first use."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'sweeps' has no attribute {name!r}")
    module, attr = _PUBLIC[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
