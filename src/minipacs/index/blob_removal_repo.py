"""SQL of the deferred removal of replaced copies' blobs (``blob_removals``; core/blob_removals.py).

A copy replaced by another (a re-sent copy under duplicate_policy "replace", a corrected copy, a
compressed copy) is queued here in the transaction that switches its row, and its blob is removed
once ``remove_after`` has passed and no row names its key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Final, NamedTuple

from sqlalchemy import Connection, delete, func, insert, select

from minipacs.index.schema import BlobRemoval, Instance

#: Values per IN list.
_IN_CHUNK: Final = 500


class Replaced(NamedTuple):
    """A replaced copy to queue: its blob key, its size, why it was replaced."""

    blob_key: str
    size: int
    reason: str


class Due(NamedTuple):
    """A queued removal whose time has come; ``in_use``: a row names its key (never removed)."""

    id: int
    blob_key: str
    in_use: bool


def queue(conn: Connection, replaced: Sequence[Replaced], remove_after: dt.datetime) -> None:
    """Queue the blobs of ``replaced`` for removal after ``remove_after`` (one statement)."""
    if replaced:
        conn.execute(
            insert(BlobRemoval),
            [
                {"blob_key": r.blob_key, "size": r.size, "reason": r.reason, "remove_after": remove_after}
                for r in replaced
            ],
        )


def due(conn: Connection, now: dt.datetime, limit: int) -> list[Due]:
    """The removals due at ``now``, oldest first, each saying whether a row names its key."""
    in_use = select(Instance.id).where(Instance.blob_key == BlobRemoval.blob_key).exists()
    rows = conn.execute(
        select(BlobRemoval.id, BlobRemoval.blob_key, in_use)
        .where(BlobRemoval.remove_after <= now)
        .order_by(BlobRemoval.id)
        .limit(limit)
    )
    return [Due(int(i), str(k), bool(used)) for i, k, used in rows]


def forget(conn: Connection, ids: Sequence[int]) -> None:
    """Drop the queue rows ``ids`` (their blobs were removed, or a row names their key)."""
    for start in range(0, len(ids), _IN_CHUNK):
        conn.execute(delete(BlobRemoval).where(BlobRemoval.id.in_(list(ids[start : start + _IN_CHUNK]))))


def pending(conn: Connection) -> tuple[int, int]:
    """(copies, bytes) queued and not yet removed."""
    count, size = conn.execute(select(func.count(), func.coalesce(func.sum(BlobRemoval.size), 0))).one()
    return int(count), int(size)


def pending_keys(conn: Connection) -> set[str]:
    """The blob keys queued for removal: files of replaced copies, not unindexed leftovers."""
    return {str(key) for (key,) in conn.execute(select(BlobRemoval.blob_key))}


__all__ = ["Due", "Replaced", "due", "forget", "pending", "pending_keys", "queue"]
