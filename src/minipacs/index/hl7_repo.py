"""SQL of the HL7 acknowledgements kept for resends (core/hl7_acks.py)."""

from __future__ import annotations

import datetime as dt
from typing import Final, cast

from sqlalchemy import Connection, Table, delete, select

from minipacs.index.dialects import insert_of
from minipacs.index.schema import HL7Ack

_ACKS: Final = cast(Table, HL7Ack.__table__)


def ack_for(conn: Connection, digest: str, since: dt.datetime) -> bytes | None:
    """The ACK kept for the message of ``digest`` when it was accepted at ``since`` or later."""
    row = conn.execute(select(_ACKS.c.ack).where(_ACKS.c.digest == digest, _ACKS.c.received_at >= since)).first()
    return None if row is None else bytes(row[0])


def keep_ack(conn: Connection, digest: str, ack: bytes, now: dt.datetime) -> None:
    """Keep (or replace) the ACK of the message of ``digest``."""
    statement = insert_of(conn)(_ACKS).values(digest=digest, ack=ack, received_at=now)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["digest"], set_={"ack": statement.excluded.ack, "received_at": now}
        )
    )


def prune_acks(conn: Connection, before: dt.datetime) -> None:
    """Forget the ACKs of messages accepted before ``before`` (out of the resend window)."""
    conn.execute(delete(_ACKS).where(_ACKS.c.received_at < before))


__all__ = ["ack_for", "keep_ack", "prune_acks"]
