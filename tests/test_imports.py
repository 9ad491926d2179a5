"""The package's import graph has no circles, counting imports inside functions too: a circle
makes each module's import order matter, and a lazy import that hides one is still one."""

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "vitpeft"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in it (a name imported from a package
    counts as its submodule when it is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known}


def import_cycles() -> list[list[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {name: imported_modules(path, set(modules)) - {name} for name, path in modules.items()}
    # a package's __init__ importing its own submodules is how a package is built, not a circle
    edges = {a: {b for b in bs if not b.startswith(f"{a}.")} for a, bs in edges.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    return cycles


def test_the_package_has_no_import_circles():
    assert import_cycles() == []
