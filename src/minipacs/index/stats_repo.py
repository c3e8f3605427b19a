"""What the archive holds, from the counters the index keeps (``storage_stats``, migration 0010).

Triggers keep the counters in the transaction that inserts, replaces or deletes a row, so a
reading costs one statement over at most a few rows, whatever the size of the archive: no
COUNT(*) over the instances, no walk of the storage folder.
"""

from __future__ import annotations

from typing import Final, NamedTuple, cast

from sqlalchemy import Connection, Table, func, select

from minipacs.index.schema import StorageStats

_STATS: Final = cast(Table, StorageStats.__table__)
_COUNTERS: Final = ("patients", "studies", "series", "instances", "instance_bytes")
# PostgreSQL keeps the counters on several rows (slots): their sum is the figure.
_READ: Final = select(*(func.coalesce(func.sum(_STATS.c[name]), 0) for name in _COUNTERS))


class StorageCounts(NamedTuple):
    patients: int
    studies: int
    series: int
    instances: int
    instance_bytes: int  # the sum of the stored instances' file sizes


def read_counts(conn: Connection) -> StorageCounts:
    """The counters, as of the last committed write (one statement)."""
    row = conn.execute(_READ).one()
    return StorageCounts(*(int(value) for value in row))


def count_instances(conn: Connection) -> int:
    """The number of stored instances, from the counter."""
    return read_counts(conn).instances


__all__ = ["StorageCounts", "count_instances", "read_counts"]
