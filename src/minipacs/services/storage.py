"""Storage Service Class, SCP side: PS3.4 Annex B (C-STORE).

Every Storage SOP class of the standard is accepted in every transfer syntax
we know (stored as received): in each context the requestor's first choice,
but a syntax that may be lossy only when the context proposes no lossless one
(net/presentation.py ``chosen_last``). The dataset streams into a staging file; the
response goes out only after the archive made file and index row durable.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Final

from pydicom.uid import UID

from minipacs.core.archive import Archive
from minipacs.core.errors import ArchiveError
from minipacs.core.model import Origin, StagedPath
from minipacs.core.staging import StagingFile
from minipacs.dicom.uids import DICOM_UID_ROOT, MAY_BE_LOSSY_SYNTAXES, STORAGE_BRANCH, transfer_syntax, uid_name
from minipacs.dicom.uids_generated import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from minipacs.net.association import Association, DatasetSink, Message
from minipacs.net.dimse import Command
from minipacs.net.memory import MemoryBudget
from minipacs.net.presentation import NegotiatedContext, SupportedContext
from minipacs.services.base import Service, record_operation
from minipacs.services.dispatch import Operation, Response
from minipacs.services.status import SUCCESS, describe, error_comment, status_for_store_error
from minipacs.services.storage_scu import CONVERTED_TO

log = logging.getLogger("minipacs.storage")

#: Every transfer syntax whose header we can parse.
STORABLE_TRANSFER_SYNTAXES = frozenset(uid for uid in TRANSFER_SYNTAXES if transfer_syntax(uid) is not None)
#: C-GET sub-operations (we send on the requestor's storage contexts): of the syntaxes one context
#: proposes, these first (native, then deflated) -- every stored instance can be sent in them
#: (core/transcode.py); picking a
#: compressed one proposed first (getscu +xs: [JPEG Lossless, Explicit VR LE, ...]) failed every
#: instance not stored in it, as nothing is compressed on the way out. A requestor that wants stored
#: compressed bytes as they are proposes that syntax in a context of its own (PS3.4 C.4.3.3.1).
SENT_SYNTAXES = CONVERTED_TO


class StagingSink:
    """Adapts a StagingFile to the association's DatasetSink.

    ``reserved``: bytes of ``budget`` (net/memory.py) this C-STORE holds while it may be in memory,
    given back once (:meth:`release`) when it has been ingested or discarded."""

    __slots__ = ("budget", "reserved", "staged", "staging")

    def __init__(self, staging: StagingFile, budget: MemoryBudget | None = None, reserved: int = 0) -> None:
        self.staging = staging
        self.staged: StagedPath | None = None
        self.budget = budget
        self.reserved = reserved

    def write(self, data: bytes | memoryview) -> None:
        self.staging.write(data)

    def finish(self) -> None:
        self.staged = self.staging.finish()

    def discard(self) -> None:
        self.staging.discard()
        self.release()

    def release(self) -> None:
        reserved, self.reserved = self.reserved, 0
        if reserved and self.budget is not None:
            self.budget.give(reserved)


#: PS3.5 9.1: a UID is dot-separated numbers without leading zeros, at most 64 characters.
_UID: Final = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def unknown_storage_class(uid: str) -> bool:
    """Whether ``uid`` may be accepted as an unknown Storage SOP class (``accept_unknown_sop_classes``): a
    valid UID outside the standard's root (private), or on its Storage branch but in no dictionary of
    ours (newer than DICOM 2024c). Any other standard UID stays refused -- another branch's (a Q/R
    model, a print class) and the services PS3.6 puts on the Storage branch itself (Inventory and
    Protocol Approval FIND/MOVE/GET, Repository Query): storing under one would answer a request for
    another service with a C-STORE's success."""
    if len(uid) > 64 or not _UID.fullmatch(uid):
        return False
    if not uid.startswith(DICOM_UID_ROOT):
        return True
    return uid.startswith(STORAGE_BRANCH) and UID(uid).name == uid  # pydicom names every UID it knows


class StorageSCP(Service):
    name = "storage"

    def __init__(self, archive: Archive, *, scu_role: bool = False, accept_unknown_sop_classes: bool = False) -> None:
        """``scu_role``: also grant a requester the SCP role for Storage (SCP/SCU role
        selection, PS3.7 D.3.3.4) -- what a C-GET SCP on the same listener needs.
        ``accept_unknown_sop_classes``: accept a proposed SOP class we do not know when
        :func:`unknown_storage_class` allows it (:meth:`unknown_context`)."""
        self.archive = archive
        self.scu_role = scu_role
        self.accept_unknown_sop_classes = accept_unknown_sop_classes

    def _context(self, uid: str) -> SupportedContext:
        return SupportedContext(
            uid,
            STORABLE_TRANSFER_SYNTAXES,
            scu_role=self.scu_role,
            preferred_when_we_send=SENT_SYNTAXES,
            chosen_last=MAY_BE_LOSSY_SYNTAXES,
        )

    def supported_contexts(self) -> Mapping[str, SupportedContext]:
        return {uid: self._context(uid) for uid in STORAGE_SOP_CLASSES}

    def unknown_context(self, abstract_syntax: str) -> SupportedContext | None:
        """What we accept for a proposed abstract syntax no service lists (services/server.py), or None."""
        if self.accept_unknown_sop_classes and unknown_storage_class(abstract_syntax):
            return self._context(abstract_syntax)
        return None

    def handlers(self) -> Mapping[str, Operation]:
        return {"C-STORE-RQ": Operation(self.c_store, access="store")}

    def sink_for(self, assoc: Association, context: NegotiatedContext, command: Command) -> DatasetSink | None:
        """A staging file; in memory when the archive takes this one so (receive_in_memory_max_bytes) and the
        process's budget for data sets in memory (net/memory.py, memory_datasets_budget_bytes) has room for
        that much, else on disk at once: a C-STORE is never refused for memory, it goes to disk."""
        budget = assoc.settings.memory_budget
        in_memory = self.archive.memory_staging_bytes(context.transfer_syntax)
        reserved = in_memory if in_memory and budget is not None and budget.take(in_memory) else 0
        try:
            staging = self.archive.open_staging(
                command.affected_sop_class_uid,
                command.affected_sop_instance_uid,
                context.transfer_syntax,
                assoc.calling_ae,
                # ingested at once: a small one never touches the staging folder
                in_memory=in_memory > 0 and (budget is None or reserved > 0),
            )
        except BaseException:
            if reserved and budget is not None:
                budget.give(reserved)
            raise
        return StagingSink(staging, budget, reserved)

    async def c_store(self, assoc: Association, message: Message) -> Response:
        """PS3.4 B.2.3: Success only once the instance is durable; a refusal says why."""
        cmd = message.command
        sop_class = cmd.affected_sop_class_uid
        sop_instance = cmd.affected_sop_instance_uid
        status, text = SUCCESS, ""
        short = ""  # the Error Comment, when the full text (logged) does not fit its 64 characters
        outcome = ""
        sink = message.dataset
        if message.dataset_error is not None:
            status, text = status_for_store_error(message.dataset_error), str(message.dataset_error)
            short = error_comment(status, message.dataset_error)
        elif sop_class != message.context.abstract_syntax:
            # PS3.4 B.2.3: the announced class must match the presentation context.
            status = 0xA900
            text = (
                f"C-STORE of {uid_name(sop_class)} on a context negotiated for "
                f"{uid_name(message.context.abstract_syntax)}"
            )
            if isinstance(sink, StagingSink):
                sink.discard()
        elif not isinstance(sink, StagingSink) or sink.staged is None:
            status, text = 0xC000, "C-STORE request without a dataset"
        else:
            origin = Origin("dicom", assoc.calling_ae, assoc.called_ae, assoc.peer_host, assoc.peer_port)
            try:
                result = await self.archive.ingest(sink.staged, origin)
                outcome = result.status.value
            except ArchiveError as exc:
                status, text = status_for_store_error(exc), str(exc)
                short = error_comment(status, exc)
            except Exception as exc:
                log.exception("%s storing %s failed", assoc.label, sop_instance)
                status, text = status_for_store_error(exc), f"internal error: {type(exc).__name__}"
            finally:
                sink.release()  # ingested (or refused): its bytes are no longer held
        if status != SUCCESS:
            log.warning("%s C-STORE %s refused with %s: %s", assoc.label, sop_instance, describe(status), text)
        record_operation(
            assoc,
            op="C-STORE",
            sop_class=sop_class,
            sop_instance=sop_instance,
            status=status,
            outcome=outcome or ("success" if status == SUCCESS else "failed"),
            error=text,
        )
        return Response(status, error=short or text)
