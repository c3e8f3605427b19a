"""What the archive holds and the room left, for ``GET /api/stats`` (issue 10).

Counts and bytes come from the counters the index keeps in the transaction of every write
(``index/stats_repo.py``, migration 0010): one statement, whatever the size of the archive.
The free space is one statvfs of the staging folder, which is on the storage filesystem
(staged files are renamed into storage). Nothing here walks the storage folder.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
from dataclasses import dataclass
from typing import Any

from minipacs.core.archive import Archive
from minipacs.index import stats_repo
from minipacs.index.stats_repo import Arrivals, StorageCounts

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class NodeFigures:
    """One node's own figures as it last wrote them to the index (``node_stats``): what a process
    keeps in memory or measures on its own disk, visible from every node sharing the index."""

    node_id: str
    started_at: dt.datetime
    updated_at: dt.datetime
    ingested: int  # ingests (any outcome) since the node started
    index_batches: int  # index transactions carrying them
    free_bytes: int  # free on the node's staging filesystem
    running: bool  # False after a clean stop

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "started_at": self.started_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "ingested_since_start": self.ingested,
            "index_batches": self.index_batches,
            "free_bytes": self.free_bytes,
            "running": self.running,
        }


async def node_figures(archive: Archive) -> list[NodeFigures]:
    """Every node's figures, by node_id (one statement)."""
    rows = await archive.read(stats_repo.read_node_stats)
    return [
        NodeFigures(
            node_id=row["node"],
            started_at=row["started_at"],
            updated_at=row["updated_at"],
            ingested=int(row["ingested"]),
            index_batches=int(row["index_batches"]),
            free_bytes=int(row["free_bytes"]),
            running=bool(row["running"]),
        )
        for row in rows
    ]


class NodeStatsPublisher:
    """Writes this node's figures into the index at start, every ``interval`` seconds and at a clean
    stop (``running`` False then), so ``GET /api/stats`` on any node shows every node."""

    def __init__(self, archive: Archive, node_id: str, interval: float) -> None:
        self.archive = archive
        self.node_id = node_id
        self.interval = interval
        self.started_at = dt.datetime.now(dt.UTC)

    async def publish(self, *, running: bool = True) -> None:
        ingest = self.archive.stats
        usage = await asyncio.to_thread(shutil.disk_usage, self.archive.staging_dir)
        values = {
            "started_at": self.started_at,
            "updated_at": dt.datetime.now(dt.UTC),
            "ingested": ingest.ingested,
            "index_batches": ingest.batches,
            "free_bytes": usage.free,
            "running": running,
        }
        await self.archive.write(lambda conn: stats_repo.write_node_stats(conn, self.node_id, values))

    async def run(self) -> None:
        """Publish every ``interval`` seconds until cancelled; a failed round is logged and retried."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.publish()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("node statistics: could not write this node's figures to the index: %s", exc)


__all__ = [
    "Arrivals",
    "NodeFigures",
    "NodeStatsPublisher",
    "StorageCounts",
    "StorageFigures",
    "arrivals",
    "node_figures",
    "recount",
    "storage_figures",
]
