"""Verification Service Class: PS3.4 Annex A (C-ECHO), SCP and SCU."""

from __future__ import annotations

from collections.abc import Mapping

from minipacs.dicom.uids import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    VERIFICATION_SOP_CLASS,
)
from minipacs.net.association import Association, DatasetSink, Message
from minipacs.net.dimse import Command
from minipacs.net.presentation import NegotiatedContext, SupportedContext
from minipacs.services.base import Service, record_operation
from minipacs.services.dispatch import Operation, Response
from minipacs.services.status import SUCCESS

UNCOMPRESSED = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})


class VerificationSCP(Service):
    name = "verification"

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        return {VERIFICATION_SOP_CLASS: SupportedContext(VERIFICATION_SOP_CLASS, UNCOMPRESSED)}

    def handlers(self) -> Mapping[str, Operation]:
        return {"C-ECHO-RQ": Operation(self.c_echo, access="echo")}

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> DatasetSink | None:
        return None

    async def c_echo(self, assoc: Association, message: Message) -> Response:
        """PS3.4 A.4: the SCP answers Success."""
        record_operation(assoc, op="C-ECHO", status=SUCCESS, outcome="success")
        return Response(SUCCESS)


async def echo(assoc: Association) -> int:
    """C-ECHO as SCU; returns the status."""
    ctx = assoc.context_for(VERIFICATION_SOP_CLASS)
    if ctx is None:
        raise LookupError("the peer did not accept the Verification SOP Class")
    rq = Command.make("C-ECHO-RQ", MessageID=assoc.next_message_id(), AffectedSOPClassUID=VERIFICATION_SOP_CLASS)
    status = -1
    async for rsp in assoc.request(ctx.context_id, rq):
        status = rsp.command.status
    return status
