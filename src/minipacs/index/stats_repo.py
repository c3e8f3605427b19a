"""What the archive holds, from the counters the index keeps (``storage_stats``, migration 0010).

Triggers keep the counters in the transaction that inserts, replaces or deletes a row, so a
reading costs one statement over at most a few rows, whatever the size of the archive: no
COUNT(*) over the instances, no walk of the storage folder.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final, NamedTuple, cast

from sqlalchemy import Connection, Table, func, insert, select, text, update

from minipacs.index.schema import Instance, NodeStats, Patient, Series, StorageStats, Study

_STATS: Final = cast(Table, StorageStats.__table__)
_NODES: Final = cast(Table, NodeStats.__table__)


class StorageCounts(NamedTuple):
    patients: int
    studies: int
    series: int
    instances: int
    instance_bytes: int  # the sum of the stored instances' file sizes


#: The counter columns of ``storage_stats``, named as the fields above.
_COUNTERS: Final = StorageCounts._fields
# PostgreSQL keeps the counters on several rows (slots): their sum is the figure.
_READ: Final = select(*(func.coalesce(func.sum(_STATS.c[name]), 0) for name in _COUNTERS))


def read_counts(conn: Connection) -> StorageCounts:
    """The counters, as of the last committed write (one statement)."""
    row = conn.execute(_READ).one()
    return StorageCounts(*(int(value) for value in row))


def count_rows(conn: Connection) -> StorageCounts:
    """The figures counted from the rows themselves: COUNT(*) of each table, the sum of the sizes.
    Slow on a large archive (it reads every row); for checks and :func:`recount`, never for a page."""
    counts = [
        conn.execute(select(func.count()).select_from(t)).scalar_one() for t in (Patient, Study, Series, Instance)
    ]
    size = conn.execute(select(func.coalesce(func.sum(Instance.size), 0))).scalar_one()
    patients, studies, series, instances = (int(n) for n in counts)
    return StorageCounts(patients, studies, series, instances, int(size))


class Arrivals(NamedTuple):
    instances: int
    studies: int  # distinct studies that received at least one of those instances
    bytes: int


def arrivals_since(conn: Connection, since: dt.datetime) -> Arrivals:
    """Instances received since ``since`` (by ``received_at``, indexed: migration 0021), their studies
    and bytes. Reads only the rows of that window: cheap for an hour or a day of arrivals."""
    row = conn.execute(
        select(
            func.count(Instance.id),
            func.count(func.distinct(Series.study_pk)),
            func.coalesce(func.sum(Instance.size), 0),
        )
        .join(Series, Series.id == Instance.series_pk)
        .where(Instance.received_at >= since)
    ).one()
    return Arrivals(int(row[0]), int(row[1]), int(row[2]))


def recount(conn: Connection) -> tuple[StorageCounts, StorageCounts]:
    """Set the counters to :func:`count_rows` (a repair: after rows were changed with the triggers
    off, e.g. a TRUNCATE); (the counters before, after). Run it in the writer's transaction. On
    PostgreSQL it locks the four tables against writers of any node until the transaction ends,
    so no concurrent change is lost between counting and setting."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE patients, studies, series, instances IN SHARE MODE"))
    before, rows = read_counts(conn), count_rows(conn)
    conn.execute(update(_STATS).values(dict.fromkeys(_COUNTERS, 0)))
    conn.execute(update(_STATS).where(_STATS.c.slot == 0).values(rows._asdict()))
    return before, rows


def count_instances(conn: Connection) -> int:
    """The number of stored instances, from the counter."""
    return read_counts(conn).instances


def write_node_stats(conn: Connection, node: str, values: Mapping[str, Any]) -> None:
    """Set the row of ``node`` in ``node_stats`` (created on its first write). Only the node itself
    writes its row, and two live nodes never share a node_id (index/node_claim.py): no race."""
    found = conn.execute(update(_NODES).where(_NODES.c.node == node).values(dict(values))).rowcount
    if not found:
        conn.execute(insert(_NODES).values({**values, "node": node}))


def read_node_stats(conn: Connection) -> list[dict[str, Any]]:
    """Every node's row of ``node_stats``, by node_id."""
    return [dict(row._mapping) for row in conn.execute(select(_NODES).order_by(_NODES.c.node))]


__all__ = [
    "StorageCounts",
    "count_instances",
    "count_rows",
    "read_counts",
    "read_node_stats",
    "recount",
    "write_node_stats",
]
