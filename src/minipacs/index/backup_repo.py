"""The statements of a backup (core/backup.py): which blobs an index names."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import select

from minipacs.index.database import IndexConnection
from minipacs.index.schema import Instance


def blob_keys(conn: IndexConnection) -> set[str]:
    """The blob key of every stored instance."""
    return {key for (key,) in conn.execute(select(Instance.blob_key))}


def blob_keys_of_copy(path: Path) -> dict[str, int]:
    """The blob key of every stored instance of the SQLite index copy at ``path``, with its size as the
    row holds it (-1 when the row has none)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            key: size if size is not None else -1 for key, size in conn.execute("SELECT blob_key, size FROM instances")
        }
    finally:
        conn.close()


__all__ = ["blob_keys", "blob_keys_of_copy"]
