"""Trainers by name, and user trainers by import path (``my_pkg.my_module:MyTrainer`` or ``my_module:train``)."""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any

from trainables.protocol import is_function_trainer, signature_problem

BUILTIN = {
    "vae": "trainables.vae:VAETrainer",
    "sr_gan": "trainables.sr_gan:SRGANTrainer",
    "translation_gan": "trainables.translation_gan:TranslationGANTrainer",
}


class TrainerLoadError(ValueError):
    """The trainer named in a spec cannot be found or is not a trainer."""


def load_trainer(name: str) -> Any:
    """Return the trainer for a built-in name or an import path: a class, or a function ``train(config, run)``."""
    path = BUILTIN.get(name, name)
    if ":" not in path:
        known = ", ".join(sorted(BUILTIN))
        head, dot, tail = path.rpartition(".")
        hint = f"did you mean '{head}:{tail}'? " if dot and head and tail else ""
        raise TrainerLoadError(
            f"unknown trainer {name!r} ({hint}built-in: {known}; or use module:Class or module:function)"
        )
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        where = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name and module_name.startswith(exc.name):
            where = f" (modules are looked up from the working directory {os.getcwd()} and PYTHONPATH)"
        raise TrainerLoadError(f"cannot import trainer module {module_name!r}: {exc}{where}") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise TrainerLoadError(f"module {module_name!r} has no attribute {attr!r}")
    if is_function_trainer(cls):
        problem = signature_problem(cls)
        if problem:
            raise TrainerLoadError(f"{path!r} is not a trainer: {problem}")
        return cls
    missing = [m for m in ("train_epoch", "validate", "state_dict", "load_state_dict") if not hasattr(cls, m)]
    config = getattr(cls, "Config", None)
    if missing or config is None or not dataclasses.is_dataclass(config):
        lacks = ", ".join(
            missing + ([] if config is not None and dataclasses.is_dataclass(config) else ["Config dataclass"])
        )
        raise TrainerLoadError(f"{path!r} is not a trainer: it lacks {lacks}")
    return cls
