"""Tests only: the local file of a stored instance on the filesystem blob store.

The archive reads stored files through its BlobStore only (blobs/base.py); tests that damage
or inspect the file on disk find it here (FilesystemBlobStore.path_of)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minipacs.blobs.filesystem import FilesystemBlobStore
from minipacs.core.errors import NotFound
from minipacs.index import repository as repo


async def instance_path(archive: Any, sop_instance_uid: str) -> Path:
    """The stored file of ``sop_instance_uid`` (filesystem store); NotFound when not stored."""
    key = await archive.read(lambda conn: repo.blob_key_of(conn, sop_instance_uid))
    if key is None:
        raise NotFound(f"SOP Instance {sop_instance_uid} is not in the archive")
    assert isinstance(archive.blobs, FilesystemBlobStore), "only the filesystem store has local paths"
    return archive.blobs.path_of(key)
