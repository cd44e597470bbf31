"""The layer contract, checked on the source: the application package ``finsent`` sits on
top, ``consumers``, ``alerts`` and ``training`` in the middle (none imports another),
``pipeline`` at the base (it imports nothing of the project above it), and no module
import cycle anywhere. Every import counts, also those inside functions: a lazy import is
still a dependency. ``migrations`` is base-level too (alembic loads it; it may read
``pipeline``)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("finsent", "consumers", "alerts", "training", "pipeline", "migrations")
#: package -> the project packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "finsent": {"consumers", "alerts", "training", "pipeline", "migrations"},
    "consumers": {"pipeline"},
    "alerts": {"pipeline"},
    "training": {"pipeline"},
    "pipeline": {"migrations"},
    "migrations": {"pipeline"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every project module ``path`` imports (absolute and relative, at any depth)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in _imports(path):
            # "from a.b import c": c may be a module or a name in a.b; keep what exists.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def test_every_package_imports_only_the_layers_below_it() -> None:
    bad = []
    for module, targets in sorted(_graph().items()):
        top = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != top and other not in ALLOWED[top]:
                bad.append(
                    f"{module} imports {target} ({top} may import only {sorted(ALLOWED[top])})"
                )
    assert not bad, "layer contract broken:\n" + "\n".join(bad)


def test_there_is_no_import_cycle_between_modules() -> None:
    graph = _graph()
    # A package's __init__ re-exporting its own modules is not a cycle of the design.
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_project_import_is_guarded_by_import_error() -> None:
    """A broken install must fail loudly at start, not switch a role off."""
    guarded = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if not isinstance(node, ast.Try):
                    continue
                catches = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
                if not catches & {
                    "ImportError",
                    "ModuleNotFoundError",
                    "(ImportError, ModuleNotFoundError)",
                }:
                    continue
                for inner in node.body:
                    for sub in ast.walk(inner):
                        names = (
                            [a.name for a in sub.names]
                            if isinstance(sub, ast.Import)
                            else [sub.module or ""]
                            if isinstance(sub, ast.ImportFrom) and not sub.level
                            else ["."]
                            if isinstance(sub, ast.ImportFrom)
                            else []
                        )
                        if any(n == "." or n.split(".")[0] in PACKAGES for n in names):
                            guarded.append(f"{path.relative_to(ROOT)}:{sub.lineno}")
    assert not guarded, "project imports behind except ImportError: " + ", ".join(guarded)
