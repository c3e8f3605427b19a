"""Query/Retrieve C-GET SCP: PS3.4 C.4.3 (Patient Root and Study Root GET).

The C-STORE sub-operations go back over the SAME association (PS3.4 C.4.3.3),
so the requester must have proposed the Storage SOP classes with SCP/SCU role
selection and been granted the SCP role (PS3.7 D.3.3.4); an instance whose SOP
class has no such context fails as a sub-operation, with a sentence saying so.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing

from minipacs.core.archive import Archive
from minipacs.core.errors import ArchiveError
from minipacs.core.retrieve import InvalidRetrieveIdentifier, StoredInstance, select_instances
from minipacs.dicom.uids import uid_name
from minipacs.net.association import Association, AssociationError, DatasetSink, Message
from minipacs.net.dimse import Command
from minipacs.net.pdu_items import SOPClassExtendedNegotiation
from minipacs.net.presentation import NegotiatedContext, SupportedContext
from minipacs.services.base import Service, record_operation
from minipacs.services.dispatch import Answer, Operation, Response
from minipacs.services.qr_find import refusal_comment
from minipacs.services.qr_retrieve import (
    DEFAULT_PENDING_EVERY,
    DEFAULT_PENDING_INTERVAL,
    GET_MODELS,
    IDENTIFIER_SYNTAXES,
    IdentifierError,
    NoContext,
    Progress,
    audit_retrieve,
    decode_identifier,
    final_response,
    progress_response,
    relational_retrieve_replies,
    run_suboperations,
    suboperation_priority,
)
from minipacs.services.status import GET, IDENTIFIER_DOES_NOT_MATCH, UNABLE_TO_PROCESS, describe
from minipacs.services.storage_scu import store_file

log = logging.getLogger("minipacs.get")


def _peer_is_scp(ctx: NegotiatedContext) -> bool:
    return ctx.requestor_is_scp


class GetSCP(Service):
    """C-GET SCP for the Patient Root and Study Root information models."""

    name = "qr-get"

    def __init__(
        self,
        archive: Archive,
        *,
        pending_every: int = DEFAULT_PENDING_EVERY,
        pending_interval: float = DEFAULT_PENDING_INTERVAL,
    ) -> None:
        """``pending_every`` / ``pending_interval``: how often Pending responses go out (see run_suboperations)."""
        self.archive = archive
        self.pending_every = pending_every
        self.pending_interval = pending_interval

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        return {uid: SupportedContext(uid, IDENTIFIER_SYNTAXES) for uid in GET_MODELS}

    def handlers(self) -> Mapping[str, Operation]:
        return {"C-GET-RQ": Operation(self.c_get, access="get")}

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> DatasetSink | None:
        return None

    def extended_negotiation(
        self, proposed: Sequence[SOPClassExtendedNegotiation]
    ) -> list[SOPClassExtendedNegotiation]:
        return relational_retrieve_replies(proposed, GET_MODELS)

    async def c_get(self, assoc: Association, message: Message) -> AsyncGenerator[Answer, None]:
        """PS3.4 C.4.3.3: the sub-operations on this association, Pending responses, the final status."""
        receipt: dict[str, object] = {
            "op": "C-GET",
            "destination_ae": assoc.calling_ae,
            "destination_host": assoc.peer_host,
            "destination_port": assoc.peer_port,
        }
        try:
            async with aclosing(self._get(assoc, message, receipt)) as answers:
                async for answer in answers:
                    yield answer
        except AssociationError as exc:
            receipt.setdefault("outcome", "requester gone")
            receipt["error"] = str(exc)
            log.warning("%s C-GET ended: %s", assoc.label, exc)
        except GeneratorExit:  # the dispatcher could not send: the requester's association ended
            receipt.setdefault("outcome", "requester gone")
            raise
        finally:
            record_operation(assoc, **receipt)

    async def _get(
        self, assoc: Association, message: Message, receipt: dict[str, object]
    ) -> AsyncGenerator[Response, None]:
        model = GET_MODELS.get(message.context.abstract_syntax, "STUDY")
        try:
            level, keys = decode_identifier(message)
            receipt["level"] = level
            instances = await select_instances(self.archive, level, keys, model, located=False)
        except (IdentifierError, InvalidRetrieveIdentifier, ArchiveError) as exc:
            status = (
                UNABLE_TO_PROCESS
                if not isinstance(exc, (IdentifierError, InvalidRetrieveIdentifier))
                else IDENTIFIER_DOES_NOT_MATCH
            )
            receipt.update(status=status, outcome="refused", error=str(exc))
            log.warning("%s C-GET refused with %s: %s", assoc.label, describe(status, GET), exc)
            yield progress_response(status, error=refusal_comment(status, exc))
            return
        audit_retrieve(self.archive, assoc, instances, f"C-GET {level}")
        progress = Progress(len(instances))
        if instances and not any(c.requestor_is_scp for c in assoc.contexts.values()):
            log.warning(
                "%s C-GET of %d instance(s), but the requester negotiated no storage context with the "
                "SCP role (SCP/SCU role selection): every sub-operation will fail",
                assoc.label,
                len(instances),
            )

        priority = suboperation_priority(message)

        async def send_one(inst: StoredInstance) -> tuple[int, str]:
            if not any(_peer_is_scp(c) for c in assoc.contexts_for(inst.sop_class_uid)):
                # PS3.4 C.4.3.3.1: the SCU did not offer the storage class with the SCP role (PS3.7 D.3.3.4)
                raise NoContext(
                    f"the requester offered no context for {uid_name(inst.sop_class_uid)} with the SCP role "
                    "(SCP/SCU Role Selection, PS3.7 D.3.3.4), so it cannot receive it over this association",
                    "Storage class not offered with the SCP role (role selection)",
                )
            return await store_file(assoc, inst, usable=_peer_is_scp, priority=priority)

        async with aclosing(
            run_suboperations(assoc, message, instances, progress, send_one, self.pending_every, self.pending_interval)
        ) as pendings:
            async for pending in pendings:
                yield pending
        final = final_response(message, progress)
        status = final.status
        receipt.update(
            status=status,
            outcome=describe(status, GET).split(": ", 1)[-1],
            completed=progress.completed,
            failed=progress.failed,
            warning=progress.warning,
            remaining=progress.remaining,
            instances=len(instances),
            error=progress.errors[0] if progress.errors else "",
        )
        log.log(
            logging.INFO if status == 0 else logging.WARNING,
            "%s C-GET: %s; %d completed, %d failed, %d warning, %d not sent",
            assoc.label,
            describe(status, GET),
            progress.completed,
            progress.failed,
            progress.warning,
            progress.remaining,
        )
        yield final


__all__ = ["GetSCP"]
