"""The names a function trainer's own source mentions, to catch a misspelt key before a sweep starts.

A function trainer ``train(config, run)`` takes any key, so a typo in the spec's ``fixed`` or
``params`` (``widht: 4``) would otherwise run every trial with the loop's own default. Its source
says which keys it can read: a key read as ``config["width"]``, ``config.get("width")``,
``config.width`` or through ``Settings(**config)`` appears as a string or a name in it. This
module collects every string constant and identifier of the trainer's module, of the other modules
in its folder (one it may import by name at run time) and of the modules it imports from below that
folder (the user's project; nothing installed), so the spec check can say which keys none of them
names. A key read only by installed code is named nowhere here: that is why it is a note, not an
error.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from sweeps.core.problems import closest_key

MAX_FILES = 200
"""Read at most this many of the user's files (a trainer inside a large source tree)."""


def trainer_file(trainer: Any) -> Path | None:
    """The source file of the module that defines ``trainer`` (None: none, e.g. a built-in module)."""
    module = sys.modules.get(getattr(trainer, "__module__", "") or "")
    try:
        path = Path(inspect.getsourcefile(module) or "") if module is not None else None
    except TypeError:  # a built-in module
        return None
    return path if path is not None and path.is_file() else None


def own_sources(trainer: Any, siblings: bool = False) -> dict[Path, ast.Module]:
    """The trainer's own files, parsed: its module first, then the modules it imports from below its folder.

    ``siblings`` adds every other module in its folder (one it may import by name at run time).
    Installed packages (a virtualenv inside the folder too) are not its own. Empty: no source.
    """
    path = trainer_file(trainer)
    if path is None:
        return {}
    folder = path.parent
    parsed: dict[Path, ast.Module] = {}
    seen: set[Path] = set()
    pending = [*(sorted(folder.glob("*.py"), reverse=True) if siblings else []), path]  # its own file first
    while pending and len(seen) < MAX_FILES:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            tree = ast.parse(current.read_text(encoding="utf-8", errors="replace"))
        except (OSError, SyntaxError, ValueError):
            continue
        parsed[current] = tree
        for node in ast.walk(tree):
            pending.extend(_local_imports(node, folder, current.parent))
    return parsed


def names_in_trainer_source(trainer: Any, siblings: bool = True) -> tuple[Path, set[str]] | None:
    """The trainer's source file and every string and identifier its own files and its folder's hold.

    ``siblings=False``: only its own files (its module and what it imports from below its folder).
    None: no source to read.
    """
    parsed = own_sources(trainer, siblings=siblings)
    if not parsed:
        return None
    names = {name for tree in parsed.values() for node in ast.walk(tree) for name in _names(node)}
    return next(iter(parsed)), names


AMP_NAMES = {"opt_level", "amp_level", "amp_opt_level", "amp", "amp_mode", "dtype", "mixed_precision", "fp16"}
"""What users call the AMP level in their own loops: a hint to the engine's ``precision``."""


def unnamed_keys(trainer: Any, keys: list[str]) -> list[tuple[str, str]]:
    """Each of ``keys`` that the trainer's source never names, with a line saying so (nothing if no source)."""
    found = names_in_trainer_source(trainer)
    if found is None:
        return []
    path, names = found
    notes = []
    for key in keys:
        if key in names:
            continue
        # every name in the files is a large pool: only a close likeness (not dropout for drop_last)
        close = closest_key(key, sorted(n for n in names if n.isidentifier()), cutoff=0.75)
        hint = f" (did you mean {close!r}?)" if close else ""
        if key.lower() in AMP_NAMES:
            hint = f" (the engine's AMP level is 'precision': fp32, bf16, fp16 = O1, fp16-o2 = O2){hint}"
        notes.append((key, f"{path.name} never names {key!r}{hint}; the trainer gets it as config[{key!r}]"))
    return notes


def _names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.keyword) and node.arg:
        return [node.arg]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    return []


def _local_imports(node: ast.AST, folder: Path, here: Path) -> list[Path]:
    """The files under ``folder`` that an import statement names (a user's own modules, not installed ones)."""
    if isinstance(node, ast.Import):
        modules = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    elif isinstance(node, ast.ImportFrom) and node.level:  # relative to the importing file's package
        if node.level - 2 >= len(here.parents):
            return []
        package = here.parents[node.level - 2] if node.level > 1 else here
        return [p for alias in node.names for p in _relative(package, node.module or "", alias.name, folder)]
    else:
        return []
    found = []
    for name in modules:
        origin = _module_file(name)
        if origin is not None and _is_own(origin, folder):
            found.append(origin)
    return found


def _module_file(name: str) -> Path | None:
    """The source file of module ``name`` without importing anything new (None: not a module, or no file)."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        file = getattr(loaded, "__file__", None)
        return Path(file) if file else None
    parent = name.rpartition(".")[0]
    if parent and parent not in sys.modules:  # finding it would import its parent package
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None


def _is_own(path: Path, folder: Path) -> bool:
    """Whether ``path`` is a source file of the user's folder, not of an installed package inside it (a venv)."""
    installed = {"site-packages", "dist-packages"}
    return path.suffix == ".py" and path.is_relative_to(folder) and not installed & set(path.parts)


def _relative(package: Path, module: str, name: str, folder: Path) -> list[Path]:
    """``from .module import name`` in ``package``: the module's file, or ``name``'s if it is a submodule."""
    base = package.joinpath(*module.split(".")) if module else package
    own = [base.with_suffix(".py"), base / "__init__.py"] if module else []  # `from . import x`: x alone
    candidates = [*own, base / f"{name}.py", base / name / "__init__.py"]
    return [c for c in candidates if c.is_file() and _is_own(c, folder)]
