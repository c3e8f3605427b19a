"""The core writes no SQL and reads no configuration (ARCHITECTURE.md; issue 9 point 7).

Queries live in index/ behind its repositories; bootstrap.py builds the index and the blob
store and hands them to the core, with the values of config.py the core needs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import minipacs.core
from tests.index.test_no_core import imported_modules

CORE_DIR = Path(minipacs.core.__file__).resolve().parent
CORE_MODULES = sorted(CORE_DIR.rglob("*.py"))


def _offending(prefix: str) -> dict[str, list[str]]:
    found = {
        str(path.relative_to(CORE_DIR)): sorted(
            m for m in imported_modules(path) if m == prefix or m.startswith(prefix + ".")
        )
        for path in CORE_MODULES
    }
    return {name: modules for name, modules in found.items() if modules}


def test_there_are_core_modules_to_check() -> None:
    assert len(CORE_MODULES) > 10


@pytest.mark.parametrize(
    "forbidden", ["sqlalchemy", "alembic", "minipacs.config", "minipacs.index.schema", "minipacs.blobs.filesystem"]
)
def test_core_does_not_import(forbidden: str) -> None:
    assert _offending(forbidden) == {}


def test_the_check_finds_an_import_of_sqlalchemy(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sqlalchemy import Connection\n")
    assert "sqlalchemy" in imported_modules(probe)
