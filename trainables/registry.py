"""Trainers by name, and user trainers by import path (``my_pkg.my_module:MyTrainer`` or ``my_module:train``)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
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
    if not module_name.strip() or not attr.strip():
        raise TrainerLoadError(f"trainer {name!r}: write module:Class or module:function (both parts named)")
    if "/" in module_name or "\\" in module_name or module_name.startswith(".") or module_name.endswith(".py"):
        dotted = module_name.removesuffix(".py").lstrip("./\\").replace("/", ".").replace("\\", ".")
        raise TrainerLoadError(
            f"trainer {name!r}: name the module by import path from the working directory, not as a file: "
            f"{dotted}:{attr}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        where = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name and module_name.startswith(exc.name):
            where = f" (modules are looked up from the working directory {os.getcwd()} and PYTHONPATH)"
        raise TrainerLoadError(f"cannot import trainer module {module_name!r}: {exc}{where}") from None
    except Exception as exc:  # noqa: BLE001 - the module's own code failed at import: say where, in one line
        raise TrainerLoadError(f"cannot import trainer module {module_name!r}: {_import_failure(exc)}") from None
    except SystemExit as exc:  # a script's argparse or sys.exit run at import, not under `if __name__ == "__main__"`
        raise TrainerLoadError(
            f"importing trainer module {module_name!r} called sys.exit({exc.code!r}) (its command-line parsing or "
            'exit runs at import: put it under `if __name__ == "__main__":`)'
        ) from None
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
    bare = [f.name for f in dataclasses.fields(config) if _no_default(f)]
    if bare:  # a spec may leave any field out: each needs a default
        raise TrainerLoadError(f"{path!r} is not a trainer: its Config field(s) {', '.join(bare)} have no default")
    if not _takes_one_argument(cls):
        raise TrainerLoadError(
            f"{path!r} is not a trainer: its constructor must take the config, {cls.__name__}(config)"
        )
    return cls


def _no_default(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING and field.init


def _takes_one_argument(cls: type) -> bool:
    """Whether ``cls(config)`` can be called (by its signature; True when it cannot be read)."""
    try:
        inspect.signature(cls).bind(object())
    except TypeError:
        return False
    except ValueError:  # no signature to read (a class from C)
        return True
    return True


def _import_failure(exc: Exception) -> str:
    """One line for an exception raised while a module was imported: its type, message and where.

    A ``SyntaxError`` names its file and line in its message; any other error is placed at the
    innermost line of the user's own files in its traceback (not Python's or an installed
    package's), where the module raised or made the call that did.
    """
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    if isinstance(exc, SyntaxError):
        return text
    installed = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})
    where = None
    frame = exc.__traceback__
    while frame is not None:
        file = frame.tb_frame.f_code.co_filename
        if not file.startswith("<") and not os.path.abspath(file).startswith(installed):
            where = f"{os.path.basename(file)}, line {frame.tb_lineno}"
        frame = frame.tb_next
    return f"{text} ({where})" if where else text
