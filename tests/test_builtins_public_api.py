"""The built-in plugins are plugins like any other: they import only responder's public
names (``from responder import ...``), never a module of the core, and never each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import responder

PLUGINS = Path(__file__).parent.parent / "plugins" / "responder_plugins"
SOURCES = sorted(PLUGINS.rglob("*.py"))
BUILTINS = ("keywords", "handover", "optout", "guard", "webhook")


def imports(path: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names) of every import in a file, type-checking ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." * node.level + (node.module or ""), ()))
    return found


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(PLUGINS.parent)}:{line}"


def test_there_are_sources_to_check():
    assert {path.relative_to(PLUGINS).parts[0].removesuffix(".py") for path in SOURCES} >= {
        *BUILTINS
    }


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_a_builtin_imports_no_module_of_the_core(path):
    private = [
        f"{where(path, line)}: {module}"
        for line, module, _names in imports(path)
        if module.startswith("responder.") or module.startswith(".")
    ]
    assert private == [], "import only `from responder import <public name>`"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_a_builtin_imports_only_public_names(path):
    unknown = [
        f"{where(path, line)}: {name}"
        for line, module, names in imports(path)
        if module == "responder"
        for name in (names or ("<the module itself>",))
        if name not in responder.__all__
    ]
    assert unknown == [], "use names in responder.__all__ (add one there, and document it)"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_a_builtin_imports_no_other_builtin(path):
    own = path.relative_to(PLUGINS).parts[0].removesuffix(".py")
    others = [
        f"{where(path, line)}: {module}"
        for line, module, _names in imports(path)
        if module.startswith("responder_plugins") and module.split(".")[1:2] != [own]
    ]
    assert others == []
