"""The index sits below the core (ARCHITECTURE.md layers): no module of index/ imports minipacs.core."""

from __future__ import annotations

import ast
from pathlib import Path

import minipacs.index

INDEX_DIR = Path(minipacs.index.__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function bodies and TYPE_CHECKING blocks too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_imported_modules_sees_nested_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from minipacs.core import errors\n")
    assert "minipacs.core" in imported_modules(probe)


def test_index_imports_nothing_from_core() -> None:
    offenders = {
        str(path.relative_to(INDEX_DIR)): sorted(
            m for m in imported_modules(path) if m.split(".")[:2] == ["minipacs", "core"]
        )
        for path in sorted(INDEX_DIR.rglob("*.py"))
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}
