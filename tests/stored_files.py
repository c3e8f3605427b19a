"""Tests only: the local file of a stored instance on the filesystem blob store.

The archive reads stored files through its BlobStore only (blobs/base.py); tests that damage
or inspect the file on disk find it here (FilesystemBlobStore.path_of)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from minipacs.blobs.filesystem import FilesystemBlobStore
from minipacs.blobs.packs import slot_of
from minipacs.core.errors import NotFound
from minipacs.index import repository as repo


async def instance_path(archive: Any, sop_instance_uid: str) -> Path:
    """The stored file of ``sop_instance_uid`` (filesystem store); NotFound when not stored."""
    key = await archive.read(lambda conn: repo.blob_key_of(conn, sop_instance_uid))
    if key is None:
        raise NotFound(f"SOP Instance {sop_instance_uid} is not in the archive")
    assert isinstance(archive.blobs, FilesystemBlobStore), "only the filesystem store has local paths"
    return archive.blobs.path_of(key)


async def instance_blob(archive: Any, sop_instance_uid: str) -> tuple[str, bytes]:
    """The blob key and the stored bytes of ``sop_instance_uid``, through the archive's blob store (a
    file or a pack entry); NotFound when no row names it, BlobNotFound when its blob is missing."""
    key = await archive.read(lambda conn: repo.blob_key_of(conn, sop_instance_uid))
    if key is None:
        raise NotFound(f"SOP Instance {sop_instance_uid} is not in the archive")
    with archive.blobs.open(key) as fh:
        return key, fh.read()


def _store(storage: Path) -> FilesystemBlobStore:
    return FilesystemBlobStore(storage)  # pack_bytes 0: reads packs, makes none


def stored_bytes(storage: Path, key: str) -> bytes:
    """The bytes of blob ``key`` in the storage folder ``storage`` (DATA/storage): a file, or an entry of
    a pack (blobs/packs.py); BlobNotFound (a FileNotFoundError) when it is not there."""
    with _store(storage).open(key) as fh:
        return fh.read()


def is_stored(storage: Path, key: str) -> bool:
    return _store(storage).exists(key)


def stored_keys(storage: Path) -> set[str]:
    """Every blob key in the storage folder: each file's, each pack entry's."""
    return set(_store(storage).keys())


def dataset_of(part10: bytes) -> bytes:
    """The dataset part of a Part 10 file's bytes (everything after the File Meta Information)."""
    if part10[128:132] != b"DICM":
        raise ValueError("not a Part 10 file")
    group_length = int.from_bytes(part10[140:144], "little")
    return part10[144 + group_length :]


def lose_pack_entry(store: FilesystemBlobStore, key: str) -> bool:
    """What a power cut may do to a pack entry written since the last checkpoint: its blocks never
    reached the disk (zeros where it was). False when its pack itself is gone."""
    slot = slot_of(key)
    assert slot is not None, f"{key} is not a pack entry"
    try:
        fd = os.open(store.packs.path(slot.pack), os.O_WRONLY)
    except FileNotFoundError:
        return False
    try:
        os.pwrite(fd, bytes(slot.span()), slot.entry)
    finally:
        os.close(fd)
    return True
