"""PyTorch trainers the sweep engine drives. Plain PyTorch: no Ray or MLflow imports here."""

from trainables.config import ConfigError, build_config
from trainables.protocol import Trainer
from trainables.registry import BUILTIN, TrainerLoadError, load_trainer

__all__ = ["BUILTIN", "ConfigError", "Trainer", "TrainerLoadError", "build_config", "load_trainer"]
