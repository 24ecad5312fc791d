"""The package's shape: dependencies flow one way, no private names cross modules.

Every import statement in ``bayesmf/`` counts, function-local ones included
(they were how the old ``posterior`` reached ``coldstart``, ``recommend`` and
``storage``, which imported it back).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bayesmf"
# The bound on a module's size ("no module in bayesmf/ over about 800 lines").
MAX_LINES = 800


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> list[tuple[str, list[str]]]:
    """(imported bayesmf module, names taken from it) for every import statement of a module."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names if alias.name.startswith("bayesmf")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("bayesmf"):
                continue
            names = [alias.name for alias in node.names]
            # ``from bayesmf import data`` imports the submodule bayesmf.data.
            subs = [n for n in names if f"{base}.{n}" in MODULES]
            out += [(f"{base}.{n}", []) for n in subs]
            rest = [n for n in names if n not in subs]
            if rest:
                out.append((base, rest))
    return out


def graph() -> dict[str, set[str]]:
    edges = {}
    for name in MODULES:
        targets = set()
        for target, _ in imports(name):
            # A package's own __init__ re-exporting its children is not a dependency of the children.
            if target != name and target in MODULES:
                targets.add(target)
        edges[name] = targets
    return edges


def test_no_import_cycles():
    edges = graph()
    # A package __init__ that re-exports its children depends on them; a child importing its
    # package's __init__ would close a cycle, and is caught like any other.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_no_private_names_imported_across_modules():
    offenders = []
    for name in MODULES:
        for target, names in imports(name):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    offenders.append(f"{name} imports {target}.{n}")
    assert not offenders, offenders


def test_the_posterior_imports_none_of_its_consumers():
    consumers = {"bayesmf.coldstart", "bayesmf.ranking", "bayesmf.storage", "bayesmf.diagnostics", "bayesmf.estimator", "bayesmf.cli"}
    assert not graph()["bayesmf.posterior"] & consumers


def test_engines_do_not_orchestrate():
    for name in MODULES:
        if name.startswith("bayesmf.engines"):
            assert "bayesmf.split" not in graph()[name], f"{name} imports bayesmf.split"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_readable(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"
