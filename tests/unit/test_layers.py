"""The package's house rules, read from its source: no import circles, and no import from a lower floor up.

Every import counts: at module level, inside functions (lazy), and under TYPE_CHECKING, because each says
that one module needs another.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lib" / "servelab"

FLOORS: tuple[tuple[str, ...], ...] = (
    ("errors", "clock", "aio", "secrets", "records"),
    ("params", "schema_doc", "manifest"),
    ("serve",),
    ("observe",),
    ("measure",),
    ("analyse",),
    ("checks",),
    ("report",),
)
"""From the ground up. Any other top-level module (session, notebook, run, cli, lab, ...) is the face, on top."""
FACE = len(FLOORS)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def floor(module: str) -> int:
    if module == "servelab":
        return 0  # the package root holds only its version
    top = module.split(".")[1]
    for level, names in enumerate(FLOORS):
        if top in names:
            return level
    return FACE


def _resolve(name: str) -> str | None:
    """The servelab module `name` refers to: itself, or the package holding it (`from pkg import thing`)."""
    while name:
        if name in modules():
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def imports(module: str) -> dict[str, int]:
    """Each servelab module `module` imports, with the line of its first import."""
    path = modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            target = _resolve(name) if name.startswith("servelab") else None
            if target and target != module:
                found.setdefault(target, node.lineno)
    return found


def cycles() -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in imports(module):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in modules():
        if module not in index:
            visit(module)
    return groups


def upward_imports() -> list[str]:
    return [
        f"{modules()[module].relative_to(PACKAGE.parent)}:{line} imports {target} "
        f"(floor {floor(module)} -> {floor(target)})"
        for module in modules()
        for target, line in imports(module).items()
        if floor(target) > floor(module)
    ]


def test_the_package_has_no_import_circles():
    assert cycles() == []


def test_no_module_imports_from_a_floor_above_its_own():
    assert upward_imports() == []


def test_the_checks_see_lazy_imports_and_every_floor():
    """The rules would pass vacuously if the reader missed imports inside functions or misplaced a module."""
    assert "servelab.observe" in imports("servelab.session")  # a lazy import inside lab()
    assert {floor(module) for module in modules()} == set(range(FACE + 1))


@pytest.mark.parametrize("module", ["servelab.run", "servelab.cli", "servelab.session", "servelab.lab"])
def test_the_face_modules_are_on_the_top_floor(module):
    assert floor(module) == FACE
