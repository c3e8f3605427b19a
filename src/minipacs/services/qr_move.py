"""Query/Retrieve C-MOVE SCP: PS3.4 C.4.2 (Patient Root and Study Root MOVE).

The destination AE title is resolved through the AE registry WITH the
requester's address: when several nodes share the title, the one on the
requester's host is chosen; when none is, or the title is unknown, the move is
refused with 0xA801 and the log says which nodes were candidates -- never
"the first one" (see shared/seeds/000). The C-STORE sub-operations run on a
new association to the resolved node, sending the stored bytes as they are
when the destination accepts their transfer syntax. Every move leaves a
delivery receipt (AE, host, port, counts) in the association log.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import Protocol

from minipacs.core.archive import Archive
from minipacs.core.errors import AmbiguousDestination, ArchiveError, UnknownDestination
from minipacs.core.model import AssociationRecord
from minipacs.core.retrieve import InvalidRetrieveIdentifier, StoredInstance, select_instances
from minipacs.net.association import (
    Association,
    AssociationError,
    AssociationRejected,
    DatasetSink,
    Message,
    build_rq,
    connect,
)
from minipacs.net.dimse import Command
from minipacs.net.pdu_items import SOPClassExtendedNegotiation
from minipacs.net.presentation import NegotiatedContext, SupportedContext
from minipacs.services.base import Service, record_operation
from minipacs.services.dispatch import Answer, Operation, Response
from minipacs.services.qr_find import refusal_comment
from minipacs.services.qr_retrieve import (
    DEFAULT_PENDING_EVERY,
    DEFAULT_PENDING_INTERVAL,
    IDENTIFIER_SYNTAXES,
    MOVE_MODELS,
    IdentifierError,
    Progress,
    audit_retrieve,
    decode_identifier,
    final_response,
    progress_response,
    relational_retrieve_replies,
    run_suboperations,
    suboperation_priority,
)
from minipacs.services.status import (
    IDENTIFIER_DOES_NOT_MATCH,
    MOVE,
    MOVE_DESTINATION_UNKNOWN,
    UNABLE_TO_PROCESS,
    describe,
    is_success,
    is_warning,
)
from minipacs.services.storage_scu import proposal

log = logging.getLogger("minipacs.move")

#: PS3.8: at most 128 presentation contexts in one A-ASSOCIATE-RQ.
MAX_CONTEXTS = 128


class Destination(Protocol):
    """A resolved C-MOVE destination (``core.nodes.Node`` fits)."""

    @property
    def ae_title(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def tls(self) -> bool:
        """Call it with DICOM TLS (PS3.15 B.1)."""
        ...


class MoveDestinations(Protocol):
    """The one registry method the C-MOVE SCP needs (``core.nodes.NodeRegistry`` fits)."""

    async def resolve_move_destination(self, ae_title: str, requester_host: str) -> Destination:
        """The node to send to; raises an ArchiveError naming the candidates when it cannot choose."""
        ...


AssociationLogger = Callable[[AssociationRecord], Awaitable[object]]


def batches(instances: list[StoredInstance]) -> list[list[StoredInstance]]:
    """Split so that each batch's proposal fits in one association (128 contexts)."""
    by_class: dict[str, list[StoredInstance]] = {}
    for inst in instances:
        by_class.setdefault(inst.sop_class_uid, []).append(inst)
    result: list[list[StoredInstance]] = []
    current: list[StoredInstance] = []
    size = 0
    for group in by_class.values():
        need = len(proposal(group))
        if current and size + need > MAX_CONTEXTS:
            result.append(current)
            current, size = [], 0
        current.extend(group)
        size += need
    if current:
        result.append(current)
    return result


def destination_comment(exc: BaseException, dest_ae: str) -> BaseException | str:
    """The Error Comment of a refused Move Destination (fits 64 characters for any 16-character AE)."""
    if isinstance(exc, UnknownDestination):
        return f"Destination {dest_ae!r} is not a registered node; add it"
    if isinstance(exc, AmbiguousDestination):
        return f"Destination {dest_ae!r} is ambiguous; fix the node list"
    return exc


class MoveSCP(Service):
    """C-MOVE SCP for the Patient Root and Study Root information models."""

    name = "qr-move"

    def __init__(
        self,
        archive: Archive,
        destinations: MoveDestinations,
        *,
        connect_timeout: float = 15.0,
        pending_every: int = DEFAULT_PENDING_EVERY,
        pending_interval: float = DEFAULT_PENDING_INTERVAL,
        association_logger: AssociationLogger | None = None,
    ) -> None:
        self.archive = archive
        self.destinations = destinations
        self.connect_timeout = connect_timeout
        self.pending_every = pending_every
        self.pending_interval = pending_interval
        self.association_logger = association_logger

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        return {uid: SupportedContext(uid, IDENTIFIER_SYNTAXES) for uid in MOVE_MODELS}

    def handlers(self) -> Mapping[str, Operation]:
        return {"C-MOVE-RQ": Operation(self.c_move, access="move")}

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> DatasetSink | None:
        return None

    def extended_negotiation(
        self, proposed: Sequence[SOPClassExtendedNegotiation]
    ) -> list[SOPClassExtendedNegotiation]:
        return relational_retrieve_replies(proposed, MOVE_MODELS)

    async def c_move(self, assoc: Association, message: Message) -> AsyncGenerator[Answer, None]:
        """PS3.4 C.4.2.3: the sub-operations on a new association to the destination, Pending
        responses here, the final status."""
        dest_ae = message.command.move_destination
        receipt: dict[str, object] = {"op": "C-MOVE", "destination_ae": dest_ae}
        try:
            async with aclosing(self._move(assoc, message, dest_ae, receipt)) as answers:
                async for answer in answers:
                    yield answer
        except AssociationError as exc:  # the requester's association ended under us
            receipt.setdefault("outcome", "requester gone")
            receipt["error"] = str(exc)
            log.warning("%s C-MOVE to %r ended: %s", assoc.label, dest_ae, exc)
        except GeneratorExit:  # the dispatcher could not send: the requester's association ended
            receipt.setdefault("outcome", "requester gone")
            raise
        finally:
            record_operation(assoc, **receipt)

    def _refuse(
        self, assoc: Association, receipt: dict[str, object], status: int, why: str, cause: BaseException | str = ""
    ) -> Response:
        """Log and record the full sentence ``why``; answer with the Error Comment made of ``cause`` (or ``why``)."""
        receipt.update(status=status, outcome="refused", error=why)
        log.warning("%s C-MOVE refused with %s: %s", assoc.label, describe(status, MOVE), why)
        return progress_response(status, error=refusal_comment(status, cause or why))

    async def _move(
        self, assoc: Association, message: Message, dest_ae: str, receipt: dict[str, object]
    ) -> AsyncGenerator[Response, None]:
        model = MOVE_MODELS.get(message.context.abstract_syntax, "STUDY")
        try:
            level, keys = decode_identifier(message)
            receipt["level"] = level
            instances = await select_instances(self.archive, level, keys, model, located=False)
        except (IdentifierError, InvalidRetrieveIdentifier) as exc:
            yield self._refuse(assoc, receipt, IDENTIFIER_DOES_NOT_MATCH, str(exc), exc)
            return
        except ArchiveError as exc:
            yield self._refuse(assoc, receipt, UNABLE_TO_PROCESS, str(exc), exc)
            return
        try:
            node = await self.destinations.resolve_move_destination(dest_ae, assoc.peer_host)
        except ArchiveError as exc:
            yield self._refuse(
                assoc,
                receipt,
                MOVE_DESTINATION_UNKNOWN,
                f"{exc} (C-MOVE requested by {assoc.calling_ae!r} from {assoc.peer_host})",
                destination_comment(exc, dest_ae),
            )
            return
        receipt.update(destination_ae=node.ae_title, destination_host=node.host, destination_port=node.port)
        audit_retrieve(self.archive, assoc, instances, f"C-MOVE {level} to {node.ae_title} at {node.host}:{node.port}")
        progress = Progress(len(instances))
        log.info(
            "%s C-MOVE of %d instance(s) to %s at %s:%d (requested from %s)",
            assoc.label,
            len(instances),
            node.ae_title,
            node.host,
            node.port,
            assoc.peer_host,
        )
        errors: list[str] = []
        originator = (assoc.calling_ae, message.command.message_id)
        for batch in batches(instances):
            if message.cancelled.is_set():
                progress.cancelled = True
                break
            async with aclosing(
                self._send_batch(assoc, message, node, batch, progress, originator, errors)
            ) as pendings:
                async for pending in pendings:
                    yield pending
            if progress.cancelled:
                break
        error = errors[-1] if errors else ""
        final = final_response(message, progress, error)
        status = final.status
        receipt.update(
            status=status,
            outcome=describe(status, MOVE).split(": ", 1)[-1],
            completed=progress.completed,
            failed=progress.failed,
            warning=progress.warning,
            remaining=progress.remaining,
            instances=len(instances),
            error=error or (progress.errors[0] if progress.errors else ""),
        )
        level_name = logging.INFO if status == 0 else logging.WARNING
        log.log(
            level_name,
            "%s C-MOVE to %s at %s:%d: %s; %d completed, %d failed, %d warning, %d not sent",
            assoc.label,
            node.ae_title,
            node.host,
            node.port,
            describe(status, MOVE),
            progress.completed,
            progress.failed,
            progress.warning,
            progress.remaining,
        )
        yield final

    async def _send_batch(
        self,
        assoc: Association,
        message: Message,
        node: Destination,
        batch: list[StoredInstance],
        progress: Progress,
        originator: tuple[str, int],
        errors: list[str],
    ) -> AsyncGenerator[Response, None]:
        """One storage association to the destination for ``batch``, yielding Pending responses;
        a batch that cannot be sent at all adds its sentence to ``errors``."""
        settings = assoc.settings
        priority = suboperation_priority(message)
        rq = build_rq(settings.ae_title, node.ae_title, proposal(batch), settings)
        try:
            sub = await connect(node.host, node.port, rq, settings, connect_timeout=self.connect_timeout, tls=node.tls)
        except AssociationError as exc:
            why = f"cannot open the storage association to {node.ae_title} at {node.host}:{node.port}: {exc}"
            log.warning("%s %s", assoc.label, why)
            # The Error Comment names what to look at: a destination that answered A-ASSOCIATE-RJ is
            # reachable, and its host and port are right (PS3.8 Table 9-21 gives why, in the log).
            if isinstance(exc, AssociationRejected):
                short = f"{node.ae_title} rejected the association; see the server log"
            else:
                short = f"Cannot connect to {node.ae_title}; check its host and port"
            for inst in batch:
                progress.fail(inst, why, short)
            errors.append(short)
            return

        async def send_one(inst: StoredInstance) -> tuple[int, str]:
            from minipacs.services.storage_scu import store_file

            status, text = await store_file(sub, inst, move_originator=originator, priority=priority)
            # the sub-association's own log entry lists what it carried (issue 12 item 22)
            record_operation(
                sub,
                op="C-STORE",
                sop_class=inst.sop_class_uid,
                sop_instance=inst.sop_instance_uid,
                status=status,
                outcome="success" if is_success(status) else ("warning" if is_warning(status) else "failed"),
                error=text,
            )
            return status, text

        try:
            async with aclosing(
                run_suboperations(assoc, message, batch, progress, send_one, self.pending_every, self.pending_interval)
            ) as pendings:
                async for pending in pendings:
                    yield pending
        finally:
            if sub.dul.is_closed:
                await sub.wait_closed()
            else:
                await sub.release()
            await self._log_sub(sub)

    async def _log_sub(self, sub: Association) -> None:
        if self.association_logger is None:
            return
        from minipacs.services.server import association_record

        try:
            await self.association_logger(association_record(sub, "requestor"))
        except Exception as exc:  # noqa: BLE001 - the log must not fail the move
            log.error("could not write the association log for the C-MOVE sub-association: %s", exc)


__all__ = ["Destination", "MoveDestinations", "MoveSCP", "batches"]
