"""Basic Worklist Management Service Class, Modality Worklist SCP: PS3.4 Annex K.

Modality Worklist Information Model - FIND (K.6.1). The identifier is decoded in
the negotiated transfer syntax (qr_find's codec), matched by core/worklist.py
with the query engine's matching rules, and every match goes back as a Pending
response with every requested key answered. C-CANCEL ends the query with 0xFE00.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Mapping

from minipacs.core.worklist import Worklist
from minipacs.dicom.identifier import decode_identifier, encode_identifier, identifier_charset, response_charset
from minipacs.dicom.uids import MODALITY_WORKLIST_FIND, transfer_syntax, uid_name
from minipacs.net.association import Association, DatasetSink, Message
from minipacs.net.dimse import Command
from minipacs.net.memory import BytesSink
from minipacs.net.presentation import NegotiatedContext, SupportedContext
from minipacs.services.base import Service
from minipacs.services.dispatch import Answer, Operation, Response
from minipacs.services.qr_find import FIND_TRANSFER_SYNTAXES, find_failure, finish_find
from minipacs.services.status import FIND, FIND_CANCELLED, FIND_PENDING, SUCCESS, describe

log = logging.getLogger("minipacs.worklist")

#: (0008,0201) Timezone Offset From UTC
TIMEZONE_OFFSET_FROM_UTC = 0x00080201


class ModalityWorklistSCP(Service):
    name = "modality worklist"

    def __init__(self, worklist: Worklist) -> None:
        self.worklist = worklist

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        return {MODALITY_WORKLIST_FIND: SupportedContext(MODALITY_WORKLIST_FIND, frozenset(FIND_TRANSFER_SYNTAXES))}

    def handlers(self) -> Mapping[str, Operation]:
        return {"C-FIND-RQ": Operation(self.c_find, access="find")}

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> DatasetSink | None:
        return None

    async def c_find(self, assoc: Association, message: Message) -> AsyncGenerator[Answer, None]:
        """PS3.4 K.4.1.3: one Pending response per matching Scheduled Procedure Step, then Success."""
        cmd = message.command
        context = message.context
        sop_class = cmd.affected_sop_class_uid
        matches = 0
        status = SUCCESS
        text: str | Exception = ""
        ts = transfer_syntax(context.transfer_syntax)
        sink = message.dataset
        try:
            if message.dataset_error is not None:
                status, text = 0xC000, f"the identifier could not be received: {message.dataset_error}"
            elif ts is None or sop_class != MODALITY_WORKLIST_FIND:
                status, text = 0xA900, f"C-FIND for {uid_name(sop_class)} on the Modality Worklist context"
            elif not isinstance(sink, BytesSink):
                status, text = 0xC000, "C-FIND request without an identifier"
            else:
                identifier = decode_identifier(sink.getvalue(), context.transfer_syntax)
                request_charset = identifier_charset(identifier)
                for found in await self.worklist.find(identifier):
                    if message.cancelled.is_set():
                        break
                    offset = found.get(TIMEZONE_OFFSET_FROM_UTC)
                    if offset is not None and offset.is_empty:
                        # PS3.4 K.4.1.1.3.2: "it shall not be sent with a zero-length value"
                        del found[TIMEZONE_OFFSET_FROM_UTC]
                    charset = response_charset(request_charset, found)
                    if charset:
                        found.SpecificCharacterSet = charset
                    yield Response(FIND_PENDING, dataset=encode_identifier(found, ts))
                    matches += 1
                    await asyncio.sleep(0)  # let the reader see a C-CANCEL
                if message.cancelled.is_set():
                    status = FIND_CANCELLED
        except Exception as exc:  # noqa: BLE001 - the query's own failures get their C-FIND status
            status, text = find_failure(assoc, exc, "worklist C-FIND")
        yield finish_find(
            assoc, status, text, what="worklist C-FIND", sop_class=sop_class, level="WORKLIST", matches=matches
        )
        log.info("%s worklist C-FIND: %d match(es), %s", assoc.label, matches, describe(status, FIND))


__all__ = ["MODALITY_WORKLIST_FIND", "ModalityWorklistSCP"]
