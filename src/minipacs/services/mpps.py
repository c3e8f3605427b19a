"""Modality Performed Procedure Step SOP Class, SCP: PS3.4 Annex F (F.7), PS3.7 10.1.3 / 10.1.5.

N-CREATE creates a step IN PROGRESS (Affected SOP Instance UID from the request,
or generated and returned); N-SET moves it to COMPLETED or DISCONTINUED. The
rules and the index live in core/mpps.py; here the attribute list is decoded
in the negotiated transfer syntax and refusals become statuses
(services/status.py MPPS), with the Offending Element when one attribute is to
blame and, for a closed step, Error ID 0xA710 (PS3.4 F.7.2.2).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from minipacs.core.errors import ArchiveError, InvalidIdentifier
from minipacs.core.mpps import ProcedureSteps, StepClosed, StepRefused
from minipacs.core.paths import validate_uid
from minipacs.dicom.identifier import decode_identifier
from minipacs.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, MODALITY_PERFORMED_PROCEDURE_STEP
from minipacs.net.association import Association, DatasetSink, Message
from minipacs.net.dimse import Command
from minipacs.net.memory import BytesSink
from minipacs.net.presentation import NegotiatedContext, SupportedContext
from minipacs.services.base import Service, record_operation
from minipacs.services.dispatch import Operation, Response
from minipacs.services.status import (
    MPPS,
    MPPS_MAY_NO_LONGER_BE_UPDATED,
    PROCESSING_FAILURE,
    SUCCESS,
    describe,
    error_comment,
    status_for_mpps_error,
)

log = logging.getLogger("minipacs.mpps")

MPPS_TRANSFER_SYNTAXES: Final = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN})
#: PS3.7 C.5: statuses of a request that does not fit the context
NO_SUCH_SOP_CLASS: Final = 0x0118
INVALID_OBJECT_INSTANCE: Final = 0x0117


class MPPSSCP(Service):
    name = "modality performed procedure step"

    def __init__(self, steps: ProcedureSteps) -> None:
        self.steps = steps

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        return {
            MODALITY_PERFORMED_PROCEDURE_STEP: SupportedContext(
                MODALITY_PERFORMED_PROCEDURE_STEP, MPPS_TRANSFER_SYNTAXES
            )
        }

    def handlers(self) -> Mapping[str, Operation]:
        return {
            "N-CREATE-RQ": Operation(self.n_create, access="mpps"),
            "N-SET-RQ": Operation(self.n_set, access="mpps"),
        }

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> DatasetSink | None:
        return None

    async def n_create(self, assoc: Association, message: Message) -> Response:
        """PS3.4 F.7.2.1: create the step; the response names its SOP Instance UID."""
        cmd = message.command
        sop_class = cmd.affected_sop_class_uid
        uid = cmd.affected_sop_instance_uid or generate_uid()
        return await self._run(assoc, message, "N-CREATE", sop_class, uid, create=True)

    async def n_set(self, assoc: Association, message: Message) -> Response:
        """PS3.4 F.7.2.2: update an IN PROGRESS step; COMPLETED / DISCONTINUED are final."""
        cmd = message.command
        return await self._run(
            assoc, message, "N-SET", cmd.requested_sop_class_uid, cmd.requested_sop_instance_uid, create=False
        )

    async def _run(
        self, assoc: Association, message: Message, op: str, sop_class: str, uid: str, *, create: bool
    ) -> Response:
        status, text, offending, error_id = SUCCESS, "", None, None
        refusal: BaseException | None = None  # the Error Comment is made of it (status.error_comment)
        new_status = ""
        try:
            if sop_class != MODALITY_PERFORMED_PROCEDURE_STEP:
                status, text = NO_SUCH_SOP_CLASS, f"{op} for SOP class {sop_class} on the MPPS context"
            else:
                if create:  # PS3.7 Annex C Invalid Object Instance (0x0117): a UID against PS3.5 9.1
                    try:
                        validate_uid("Affected SOP Instance UID", uid)
                    except InvalidIdentifier as exc:
                        raise ValueError(str(exc)) from None
                ds = self._attributes(message)
                step = await (self.steps.create(uid, ds) if create else self.steps.set(uid, ds))
                new_status = step.status
        except ValueError as exc:
            status, text, refusal = INVALID_OBJECT_INSTANCE, str(exc), exc
        except StepRefused as exc:
            status, text, offending, refusal = status_for_mpps_error(exc), str(exc), exc.tag, exc
            if isinstance(exc, StepClosed):
                error_id = MPPS_MAY_NO_LONGER_BE_UPDATED
        except ArchiveError as exc:
            status, text, refusal = PROCESSING_FAILURE, str(exc), exc
        # (anything else escapes to the dispatcher: 0x0110 Processing failure, logged)
        fields: dict[str, Any] = {"AffectedSOPClassUID": sop_class}
        if uid:
            fields["AffectedSOPInstanceUID"] = uid
        if status != SUCCESS:
            if offending is not None:
                fields["OffendingElement"] = [offending]
            if error_id is not None:
                fields["ErrorID"] = error_id
            log.warning("%s MPPS %s %s refused with %s: %s", assoc.label, op, uid, describe(status, MPPS), text)
        else:
            log.info("%s MPPS %s %s: %s", assoc.label, op, uid, new_status)
        record_operation(
            assoc,
            op=op,
            sop_class=sop_class,
            sop_instance=uid,
            status=status,
            outcome="success" if status == SUCCESS else "failed",
            mpps_status=new_status,
            error=text,
        )
        comment = error_comment(status, refusal or text) if status != SUCCESS else ""
        return Response(status, error=comment, fields=fields)

    @staticmethod
    def _attributes(message: Message) -> Dataset:
        if message.dataset_error is not None:
            raise ValueError(f"the attribute list could not be received: {message.dataset_error}")
        if not isinstance(message.dataset, BytesSink):
            raise ValueError("the request has no attribute list")
        return decode_identifier(message.dataset.getvalue(), message.context.transfer_syntax)


__all__ = ["MODALITY_PERFORMED_PROCEDURE_STEP", "MPPSSCP"]
