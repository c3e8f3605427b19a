"""Index ↔ storage consistency: rows whose blob is missing, blobs no row names (``minipacs check``).

Neither should exist. Each stored copy has its own blob key (core/paths.py), a row commits
only after its file is in place and a deletion removes files only after its commit
(core/archive.py, core/delete.py); so a row without its file means the storage lost it,
and a file without a row is what a crash between the rename and the commit, or a removal
that failed after a commit, leaves: harmless (never acknowledged, or already deleted) but
taking space. It is not removed at start (walking the storage takes seconds per 100,000
files); ``minipacs check --remove-unindexed`` removes it. The file of a replaced copy that waits
out its grace period (queued in ``blob_removals``, core/blob_removals.py) is neither: a retrieve
may still be reading it. It is counted in ``pending_removal`` and never removed here.

The storage is walked first, then the index is read in this archive's writer thread,
between two of its batches: a file it renamed into storage before the walk has then
either its row committed or, its batch having failed, been moved back to staging. Files
another process (``minipacs serve``, ``import``) is committing or a deletion is removing
at that moment may still be listed: run the check again to confirm. Removal needs this
process to own the data directory (``Archive.owns_data_dir``), since another process's
files are unindexed until its commit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from minipacs.core.archive import Archive
from minipacs.core.errors import ArchiveError
from minipacs.index import blob_removal_repo
from minipacs.index import repository as repo
from minipacs.index.database import IndexConnection


class DataDirectoryInUse(ArchiveError):
    """Another minipacs process uses the data directory: its files may be unindexed only for now."""


@dataclass(frozen=True)
class StorageCheck:
    """What a check found; ``missing`` and ``unindexed`` are sorted."""

    rows: int  # instance rows in the index
    files: int  # blobs in storage
    missing: list[tuple[str, str]] = field(default_factory=list)  # (SOP Instance UID, blob key): rows without a blob
    unindexed: list[str] = field(default_factory=list)  # blob keys no row names
    #: Blobs of replaced copies waiting out their grace period (no row names them; not unindexed).
    pending_removal: int = 0

    @property
    def consistent(self) -> bool:
        return not self.missing and not self.unindexed


async def check_storage(archive: Archive) -> StorageCheck:
    """Compare every index row's blob key with the blobs in storage (see the module docstring)."""
    files = await asyncio.to_thread(lambda: set(archive.blobs.keys()))
    # between two batches of the writer
    rows, queued = await archive.write(lambda conn: (repo.blob_keys(conn), blob_removal_repo.pending_keys(conn)))
    indexed = {key for _, key in rows}
    missing = sorted((uid, key) for uid, key in rows if key not in files)
    unindexed = sorted(files - indexed - queued)

    def still() -> tuple[list[tuple[str, str]], list[str]]:
        # a row committed after the walk has its file now; a file a deletion was removing has gone
        return (
            [(uid, key) for uid, key in missing if not archive.blobs.exists(key)],
            [key for key in unindexed if archive.blobs.exists(key)],
        )

    if missing or unindexed:
        missing, unindexed = await asyncio.to_thread(still)
    if missing:  # and a row deleted after our read named a file the deletion has removed since
        now = dict(await archive.write(repo.blob_keys))
        missing = [(uid, key) for uid, key in missing if now.get(uid) == key]
    return StorageCheck(len(rows), len(files), missing, unindexed, len(files & (queued - indexed)))


async def remove_unindexed(archive: Archive, keys: list[str]) -> list[str]:
    """Remove the blobs among ``keys`` that no row names (checked again in the writer thread,
    so no ingest is between its rename and its commit); the keys removed, sorted.

    Raises DataDirectoryInUse unless this process owns the data directory.
    """
    if not archive.owns_data_dir:
        raise DataDirectoryInUse(
            f"another minipacs process uses {archive.settings.data_dir}; its files are unindexed only until "
            "its commit: stop it (minipacs serve, import) before removing unindexed files"
        )

    def remove(conn: IndexConnection) -> list[str]:
        indexed = {key for _, key in repo.blob_keys(conn)} | blob_removal_repo.pending_keys(conn)
        gone = sorted(key for key in set(keys) - indexed if archive.blobs.exists(key))
        for key in gone:
            archive.blobs.delete(key)
        return gone

    return await archive.write(remove)


__all__ = ["DataDirectoryInUse", "StorageCheck", "check_storage", "remove_unindexed"]
