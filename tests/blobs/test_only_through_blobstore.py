"""Every stored byte is read and written through the BlobStore (ARCHITECTURE.md, blobs/): nothing in
src/minipacs outside blobs/ asks for a stored file's path or builds one under DATA/storage, and only
bootstrap.py (the wiring) names a concrete store."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from minipacs.core.retrieve import StoredInstance

SRC = Path(__file__).resolve().parents[2] / "src" / "minipacs"


def _modules() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(SRC)): ast.parse(path.read_text(), str(path))
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC).parts[0] != "blobs"
    }


def test_no_path_of_outside_blobs() -> None:
    found = [
        f"{name}:{node.lineno}"
        for name, tree in _modules().items()
        for node in ast.walk(tree)
        if (isinstance(node, ast.Attribute) and node.attr == "path_of")
        or (isinstance(node, ast.Name) and node.id == "path_of")
    ]
    assert found == [], f"stored files opened by local path (use BlobStore.open/open_range/local_file): {found}"


def test_no_path_under_the_storage_folder_outside_bootstrap() -> None:
    found = [
        f"{name}:{node.lineno}"
        for name, tree in _modules().items()
        if name != "bootstrap.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Div)
        and isinstance(node.right, ast.Constant)
        and node.right.value == "storage"
    ]
    assert found == [], f"paths built under DATA/storage: {found}"


def test_only_bootstrap_names_a_concrete_store() -> None:
    found = [
        f"{name}:{node.lineno}"
        for name, tree in _modules().items()
        if name != "bootstrap.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module in ("minipacs.blobs.filesystem", "minipacs.blobs.s3")
        and not (name == "config.py" and node.module == "minipacs.blobs.s3")  # parse_s3_url, to check the setting
    ]
    assert found == [], f"modules that pick a blob store themselves: {found}"


def test_a_stored_instance_has_a_blob_key_not_a_path() -> None:
    names = {f.name for f in dataclasses.fields(StoredInstance)}
    assert "blob_key" in names and "path" not in names
