"""The HL7 acknowledgements kept in the index for resends (hl7/adt.py ``HL7Receiver``).

An HL7 sender in original mode that gets no ACK sends the same message again (HL7 v2.5 2.9.2): applied
twice, an A40 or a CA would be refused the second time and the sender file an error for a message that
was applied. hl7/sequence.py ``Resends`` answers such a resend from memory; this keeps the same ACKs in
the index (``hl7_acks``, by the SHA-256 of the message's bytes, for ``hl7_resend_window`` seconds), so a
resend that reaches the server after a restart, or another node of the index behind a load balancer,
gets the ACK too. Kept after the ACK is made, not in the transaction that applied the message: a stop
between the two (a crash in those few milliseconds) still lets a resend be applied again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging

from minipacs.core.nodes import IndexAccess
from minipacs.index import hl7_repo
from minipacs.index.database import IndexConnection

log = logging.getLogger(__name__)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class AckStore:
    """Find and keep ACKs in the index; a failure of the index is logged and treated as "not kept"."""

    def __init__(self, archive: IndexAccess, window: float) -> None:
        self.archive = archive
        self.window = window

    async def find(self, data: bytes) -> bytes | None:
        if self.window <= 0:
            return None
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.window)
        key = digest(data)
        try:
            return await self.archive.read(lambda conn: hl7_repo.ack_for(conn, key, since))
        except Exception as exc:  # noqa: BLE001 - the message is then applied as a new one, as without the index
            log.warning("HL7: the index could not be asked for an earlier ACK of this message (%s)", exc)
            return None

    async def keep(self, data: bytes, ack: bytes) -> None:
        if self.window <= 0:
            return
        now = dt.datetime.now(dt.UTC)
        key = digest(data)
        before = now - dt.timedelta(seconds=self.window)

        def run(conn: IndexConnection) -> None:
            hl7_repo.prune_acks(conn, before)
            hl7_repo.keep_ack(conn, key, ack, now)

        try:
            await self.archive.write(run)
        except Exception as exc:  # noqa: BLE001 - the ACK went out; only a resend's answer is at stake
            log.warning("HL7: the ACK could not be kept in the index for a resend (%s)", exc)


__all__ = ["AckStore", "digest"]
