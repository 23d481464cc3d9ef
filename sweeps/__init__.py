"""Hyperparameter sweeps for PyTorch image models: Ray Tune, Optuna and MLflow."""

from sweeps.spec import SpecError, SweepSpec, load_spec

__all__ = ["SpecError", "SweepSpec", "load_spec"]
__version__ = "0.1.0"
