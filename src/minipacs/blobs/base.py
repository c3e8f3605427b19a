"""The BlobStore protocol: where stored instance files live.

Keys are relative paths built by ``minipacs.core.paths`` from validated UIDs.
A store makes puts durable in two steps so ingest can batch them: each
``put_from_staging`` moves one file into place, then ``sync`` makes every put
since the last sync durable at once (group commit).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable


class BlobError(Exception):
    """A blob store refused a key or lost a blob (the store's own errors: blobs/ sits below the core)."""


class InvalidBlobKey(BlobError, ValueError):
    """A key that is not a plain relative path inside the store (never built by core.paths)."""


class BlobNotFound(BlobError, LookupError, FileNotFoundError):
    """No blob under that key (a FileNotFoundError too: readers treat a missing blob as a missing file)."""


def checked_key(key: str) -> str:
    """``key`` if it is a plain relative path (``a/b/c.dcm``: no empty, ``.`` or ``..`` part, no NUL);
    else InvalidBlobKey. Keys come from core/paths.py, so a refusal means a bug or a forged key."""
    parts = key.split("/")
    if not key or "\x00" in key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidBlobKey(f"blob key {key[:80]!r} is not a plain relative path")
    return key


@runtime_checkable
class BlobStore(Protocol):
    """Where stored instances live. Nothing outside ``blobs/`` opens a stored file by path: reads go
    through ``open``/``open_range``/``local_file``, writes through ``put_from_staging`` + ``sync``."""

    def put_from_staging(self, staged_path: Path, key: str) -> None:
        """Move a complete staged file to ``key``, replacing what is there. The staged file is
        consumed by the put (at once, or by the ``sync`` that completes it)."""

    def sync(self, *, durable: bool = True) -> None:
        """Complete every put this thread made since its last sync and make it durable (directory
        entries included); raises BlobError (staged files of failed puts are left in place).

        ``durable=False``: the caller makes them durable another way (e.g. the archive's intake
        log and its checkpoint's syncfs); a store whose puts are durable once done ignores it."""

    def take_back(self, key: str, staged_path: Path) -> None:
        """Undo a put of this thread not yet synced: the bytes are at ``staged_path`` again and
        ``key`` holds nothing (a batch that failed returns its files to staging)."""

    def local_file(self, key: str) -> AbstractContextManager[Path]:
        """A local file with the blob's bytes for the ``with`` block, for readers that need a file
        name (pydicom): the filesystem store yields its own file (no copy), others a temporary copy.
        Raises BlobNotFound (a FileNotFoundError) when the blob is missing (maybe only on use)."""

    def size(self, key: str) -> int:
        """The blob's size in bytes; raises BlobNotFound."""

    def open(self, key: str) -> BinaryIO:
        """Open the blob for reading; raises BlobNotFound."""

    def open_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start`` (inclusive) to ``end`` (exclusive), in chunks; raises BlobNotFound."""

    def delete(self, key: str) -> None:
        """Remove the blob; a missing blob is not an error."""

    def keys(self) -> Iterator[str]:
        """Every key in the store, in no particular order (a walk: slow on a large store)."""

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``."""

    def close(self) -> None:
        """Release connections and threads (the archive closes its store when it closes)."""


__all__ = ["BlobError", "BlobNotFound", "BlobStore", "InvalidBlobKey", "checked_key"]


@runtime_checkable
class WritesBytes(Protocol):
    """A blob store that can also write a new blob from memory (the filesystem store): the archive
    then receives small instances into memory and writes them itself, into a file the staging pool
    made ahead and moved in by ``put_from_staging``, or by ``put_bytes`` when the pool has none
    ready (core/archive.py ``_put_from_memory``)."""

    def put_bytes(self, data: bytes, key: str) -> None:
        """Write ``data`` as the new blob ``key``; ``sync`` completes it as it does a put, and
        ``take_back`` undoes it (the bytes go to the staged path given)."""

    def pack_key(self, length: int) -> str | None:
        """A key for a new blob of ``length`` bytes inside a larger file (blobs/packs.py), written by
        ``put_bytes`` and made durable by the caller's intake log; None: one file per blob."""

    def remove_empty_packs(self) -> int:
        """Remove the old packs with nothing left in them; how many (0 for a store without packs)."""
