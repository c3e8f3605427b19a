"""The BlobStore protocol: where stored instance files live.

Keys are relative paths built by ``minipacs.core.paths`` from validated UIDs.
A store makes puts durable in two steps so ingest can batch them: each
``put_from_staging`` moves one file into place, then ``sync`` makes every put
since the last sync durable at once (group commit).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable


class BlobError(Exception):
    """A blob store refused a key or lost a blob (the store's own errors: blobs/ sits below the core)."""


class InvalidBlobKey(BlobError, ValueError):
    """A key that is not a plain relative path inside the store (never built by core.paths)."""


class BlobNotFound(BlobError, LookupError):
    """No blob under that key."""


@runtime_checkable
class BlobStore(Protocol):
    def put_from_staging(self, staged_path: Path, key: str) -> None:
        """Move a complete staged file to ``key``, replacing what is there."""

    def sync(self, *, durable: bool = True) -> None:
        """Make every put since the last sync durable (directory entries included).

        ``durable=False``: only forget them (the caller makes them durable another way, e.g. the
        archive's intake log and its checkpoint's syncfs)."""

    def open(self, key: str) -> BinaryIO:
        """Open the blob for reading; raises BlobNotFound."""

    def open_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start`` (inclusive) to ``end`` (exclusive), in chunks; raises BlobNotFound."""

    def delete(self, key: str) -> None:
        """Remove the blob; a missing blob is not an error."""

    def path_of(self, key: str) -> Path:
        """Local path of the blob (the filesystem store; others may raise NotImplementedError)."""

    def keys(self) -> Iterator[str]:
        """Every key in the store, in no particular order (a walk: slow on a large store)."""

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``."""


__all__ = ["BlobError", "BlobNotFound", "BlobStore", "InvalidBlobKey"]
