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
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from minipacs.core.archive import Archive
from minipacs.core.errors import ArchiveError
from minipacs.core.model import AssociationRecord
from minipacs.core.retrieve import InvalidRetrieveIdentifier, StoredInstance, select_instances
from minipacs.net.association import (
    Association,
    AssociationError,
    DatasetSink,
    Message,
    RequestHandler,
    build_rq,
    connect,
)
from minipacs.net.dimse import Command
from minipacs.net.presentation import NegotiatedContext, SupportedContext
from minipacs.services.base import record_operation
from minipacs.services.qr_retrieve import (
    DEFAULT_PENDING_EVERY,
    DEFAULT_PENDING_INTERVAL,
    IDENTIFIER_SYNTAXES,
    MOVE_MODELS,
    IdentifierError,
    Progress,
    Responder,
    decode_identifier,
    run_suboperations,
)
from minipacs.services.status import (
    IDENTIFIER_DOES_NOT_MATCH,
    MOVE,
    MOVE_DESTINATION_UNKNOWN,
    UNABLE_TO_PROCESS,
    describe,
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


class MoveSCP:
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

    def handlers(self) -> Mapping[str, RequestHandler]:
        return {"C-MOVE-RQ": self.c_move}

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> DatasetSink | None:
        return None

    async def c_move(self, assoc: Association, message: Message) -> None:
        responder = Responder(assoc, message, "C-MOVE-RSP")
        dest_ae = str(message.command.get("MoveDestination", "")).strip()
        receipt: dict[str, object] = {"op": "C-MOVE", "destination_ae": dest_ae}
        try:
            await self._move(assoc, message, responder, dest_ae, receipt)
        except AssociationError as exc:  # the requester's association ended under us
            receipt.setdefault("outcome", "requester gone")
            receipt["error"] = str(exc)
            log.warning("%s C-MOVE to %r ended: %s", assoc.label, dest_ae, exc)
        finally:
            record_operation(assoc, **receipt)

    async def _refuse(self, responder: Responder, receipt: dict[str, object], status: int, why: str) -> None:
        receipt.update(status=status, outcome="refused", error=why)
        log.warning("%s C-MOVE refused with %s: %s", responder.assoc.label, describe(status, MOVE), why)
        await responder.send(status, error=why)

    async def _move(self, assoc: Association, message: Message, responder: Responder, dest_ae: str,
                    receipt: dict[str, object]) -> None:
        model = MOVE_MODELS.get(message.context.abstract_syntax, "STUDY")
        try:
            level, keys = decode_identifier(message)
            receipt["level"] = level
            instances = await select_instances(self.archive, level, keys, model, located=False)
        except (IdentifierError, InvalidRetrieveIdentifier) as exc:
            await self._refuse(responder, receipt, IDENTIFIER_DOES_NOT_MATCH, str(exc))
            return
        except ArchiveError as exc:
            await self._refuse(responder, receipt, UNABLE_TO_PROCESS, str(exc))
            return
        try:
            node = await self.destinations.resolve_move_destination(dest_ae, assoc.peer_host)
        except ArchiveError as exc:
            await self._refuse(responder, receipt, MOVE_DESTINATION_UNKNOWN,
                               f"{exc} (C-MOVE requested by {assoc.calling_ae!r} from {assoc.peer_host})")
            return
        receipt.update(destination_ae=node.ae_title, destination_host=node.host, destination_port=node.port)
        progress = Progress(len(instances))
        log.info("%s C-MOVE of %d instance(s) to %s at %s:%d (requested from %s)", assoc.label, len(instances),
                 node.ae_title, node.host, node.port, assoc.peer_host)
        error = ""
        originator = (assoc.calling_ae, int(message.command["MessageID"]))
        for batch in batches(instances):
            if message.cancelled.is_set():
                progress.cancelled = True
                break
            error = await self._send_batch(assoc, responder, node, batch, progress, originator) or error
            if progress.cancelled:
                break
        status = await responder.final(progress, error)
        receipt.update(
            status=status, outcome=describe(status, MOVE).split(": ", 1)[-1], completed=progress.completed,
            failed=progress.failed, warning=progress.warning, remaining=progress.remaining,
            instances=len(instances), error=error or (progress.errors[0] if progress.errors else ""),
        )
        level_name = logging.INFO if status == 0 else logging.WARNING
        log.log(level_name, "%s C-MOVE to %s at %s:%d: %s; %d completed, %d failed, %d warning, %d not sent",
                assoc.label, node.ae_title, node.host, node.port, describe(status, MOVE), progress.completed,
                progress.failed, progress.warning, progress.remaining)

    async def _send_batch(self, assoc: Association, responder: Responder, node: Destination,
                          batch: list[StoredInstance], progress: Progress,
                          originator: tuple[str, int]) -> str:
        """One storage association to the destination for ``batch``; returns an error sentence or ''."""
        settings = assoc.settings
        rq = build_rq(settings.ae_title, node.ae_title, proposal(batch), settings)
        try:
            sub = await connect(node.host, node.port, rq, settings, connect_timeout=self.connect_timeout,
                                tls=node.tls)
        except AssociationError as exc:
            why = (f"cannot open the storage association to {node.ae_title} at {node.host}:{node.port}: {exc}")
            log.warning("%s %s", assoc.label, why)
            for inst in batch:
                progress.fail(inst, why)
            return why

        async def send_one(inst: StoredInstance) -> tuple[int, str]:
            from minipacs.services.storage_scu import store_file

            return await store_file(sub, inst, move_originator=originator)

        try:
            await run_suboperations(responder, batch, progress, send_one, self.pending_every,
                                    self.pending_interval)
        finally:
            if sub.dul.is_closed:
                await sub.wait_closed()
            else:
                await sub.release()
            await self._log_sub(sub)
        return ""

    async def _log_sub(self, sub: Association) -> None:
        if self.association_logger is None:
            return
        from minipacs.services.server import association_record

        try:
            await self.association_logger(association_record(sub, "requestor"))
        except Exception as exc:  # noqa: BLE001 - the log must not fail the move
            log.error("could not write the association log for the C-MOVE sub-association: %s", exc)


__all__ = ["Destination", "MoveDestinations", "MoveSCP", "batches"]
