"""What the archive holds and the room left, for ``GET /api/stats`` (issue 10).

Counts and bytes come from the counters the index keeps in the transaction of every write
(``index/stats_repo.py``, migration 0010): one statement, whatever the size of the archive.
The free space is one statvfs of the staging folder, which is on the storage filesystem
(staged files are renamed into storage). Nothing here walks the storage folder.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass

from minipacs.core.archive import Archive
from minipacs.index import stats_repo


@dataclass(frozen=True)
class StorageFigures:
    patients: int
    studies: int
    series: int
    instances: int
    instance_bytes: int  # the sum of the stored instance files' sizes, as indexed
    free_bytes: int  # free on the filesystem that holds staging/ (and the filesystem blob store)


async def storage_figures(archive: Archive) -> StorageFigures:
    """The archive's counters and the free space; never touches the stored files."""
    counts = await archive.read(stats_repo.read_counts)
    usage = await asyncio.to_thread(shutil.disk_usage, archive.staging_dir)
    return StorageFigures(*counts, free_bytes=usage.free)


__all__ = ["StorageFigures", "storage_figures"]
