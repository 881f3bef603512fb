"""The package imports downward only: data and models at the bottom, training above them, evaluation
above training, the entry points on top; and no module imports itself through others."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "amint_pl"
# From the bottom up; a module may import its own layer and those below it.
LAYERS = (
    ("amint_pl", "amint_pl.errors", "amint_pl.status", "amint_pl.checkpoints"),
    ("amint_pl.data", "amint_pl.models"),
    ("amint_pl.training", "amint_pl.distributed", "amint_pl.loggers"),
    ("amint_pl.evaluation",),
    ("amint_pl.validation", "amint_pl.record"),
    ("amint_pl.run", "amint_pl.audit", "amint_pl.aggregate"),
)


def _layer(module: str) -> int:
    """The layer of a module: that of the longest prefix listed."""
    best = max(
        (
            prefix
            for layer in LAYERS
            for prefix in layer
            if module == prefix or module.startswith(prefix + ".")
        ),
        key=len,
    )
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every amint_pl module a file imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    modules = _modules()
    return {n for n in names if n in modules}


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_its_layer_or_those_below(module):
    upward = {
        imported
        for imported in _imports(MODULES[module])
        if _layer(imported) > _layer(module) and not module.startswith(imported + ".")
    }
    assert not upward, f"{module} (layer {_layer(module)}) imports {sorted(upward)} from above"


def test_no_import_cycles():
    graph = {m: _imports(p) - {m} for m, p in MODULES.items()}
    # A package's __init__ is imported with each of its modules: not an edge of a cycle.
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    done, path = set(), []

    def visit(module):
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_the_layers_name_every_module():
    assert all(_layer(m) >= 0 for m in MODULES)
    assert "amint_pl.training.module" in MODULES and len(MODULES) > 30
