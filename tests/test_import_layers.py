"""The project's imports run one way: no cycle among its modules, and each package imports only the layers below.

Read from the source (every ``import`` statement, function-local ones too), so a cycle fails here
before it fails at run time. The layers are those of ``docs/architecture.md``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS: dict[str, int] = {
    "trainables": 0,
    "sweeps.version": 1,
    "sweeps.core": 1,
    "sweeps.compat": 1,
    "sweeps.divergence": 1,
    "sweeps.spec": 2,
    "sweeps.store": 3,
    "sweeps.tracking": 4,
    "sweeps.trial": 5,
    "sweeps.results": 5,
    "sweeps.engine": 6,
    "sweeps.cli": 7,
    "sweeps.__main__": 8,
    "sweeps": 8,
}
"""Each package's layer: it may import its own modules and packages of a lower layer only."""


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in ("sweeps", "trainables"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "sweeps" and len(parts) > 1 else parts[0]


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports (the longest known prefix of each imported name)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports(path, modules) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_the_projects_modules() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk found the project
    assert cycles(graph) == []


def test_no_import_cycle_among_packages_either() -> None:
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        graph.setdefault(package_of(module), set()).update(package_of(t) for t in targets)
    for package, targets in graph.items():
        targets.discard(package)
    assert cycles(graph) == []


def test_each_package_imports_only_lower_layers() -> None:
    wrong = []
    for module, targets in import_graph().items():
        layer = LAYERS[package_of(module)]
        for target in targets:
            if package_of(target) != package_of(module) and LAYERS[package_of(target)] >= layer:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_every_package_has_a_layer() -> None:
    assert {package_of(m) for m in project_modules()} <= set(LAYERS)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_trainables_never_import_the_engine() -> None:
    graph = import_graph()
    assert not [
        (m, t) for m, targets in graph.items() if m.startswith("trainables") for t in targets if t.startswith("sweeps")
    ]
