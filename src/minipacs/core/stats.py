"""What the archive holds and the room left, for ``GET /api/stats`` (issue 10).

Counts and bytes come from the counters the index keeps in the transaction of every write
(``index/stats_repo.py``, migration 0010): one statement, whatever the size of the archive.
The free space is one statvfs of the staging folder, which is on the storage filesystem
(staged files are renamed into storage). Nothing here walks the storage folder.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from dataclasses import dataclass

from minipacs.core.archive import Archive
from minipacs.index import stats_repo
from minipacs.index.stats_repo import Arrivals, StorageCounts


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


async def arrivals(archive: Archive, since: dt.datetime) -> Arrivals:
    """Instances (and their studies, bytes) received since ``since``: an indexed range of rows."""
    return await archive.read(lambda conn: stats_repo.arrivals_since(conn, since))


async def recount(archive: Archive) -> tuple[StorageCounts, StorageCounts]:
    """Set the counters from the rows (a repair, reading every row: for ``minipacs doctor``-like
    checks, not for a page); (the counters before, after). Through the writer, like every write."""
    return await archive.write(stats_repo.recount)


__all__ = ["Arrivals", "StorageCounts", "StorageFigures", "arrivals", "recount", "storage_figures"]
