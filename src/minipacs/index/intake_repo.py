"""The intake log's mark in the index (core/intake.py): the last record whose rows are committed."""

from __future__ import annotations

from typing import Final

from sqlalchemy import Connection, bindparam, select, update

from minipacs.index.fastsql import Prepared
from minipacs.index.schema import Instance, IntakeState

_FAST_SET_LSN: Final = Prepared(update(IntakeState).where(IntakeState.id == 1).values(lsn=bindparam("lsn")))


def committed_lsn(conn: Connection) -> int:
    """The LSN stored with the last committed batch of logged instances (0: none)."""
    value = conn.execute(select(IntakeState.lsn).where(IntakeState.id == 1)).scalar()
    return int(value or 0)


def set_committed_lsn(conn: Connection, lsn: int) -> None:
    """Store ``lsn`` in the same transaction as the rows of the records up to it."""
    _FAST_SET_LSN.execute(conn, {"lsn": lsn}).close()


def touch(conn: Connection) -> None:
    """A write that changes nothing: its durable commit flushes every earlier commit (a checkpoint)."""
    conn.execute(update(IntakeState).where(IntakeState.id == 1).values(lsn=IntakeState.lsn))


def blob_key_in_use(conn: Connection, key: str) -> bool:
    """Whether an instance row names this blob key."""
    return conn.execute(select(Instance.id).where(Instance.blob_key == key).limit(1)).first() is not None


__all__ = ["blob_key_in_use", "committed_lsn", "set_committed_lsn", "touch"]
